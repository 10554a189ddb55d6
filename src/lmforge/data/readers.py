"""Readers for every supported input format, with up-front validation.

Formats: ``.txt`` corpora (one paragraph per line, a blank line between documents), ``.jsonl``, ``.csv``, ``.tsv``
and ``.parquet`` records; each may be gzip'd (``.gz``). Readers never stop at the first bad line: they collect every
problem (with ``file:line``) and raise one :class:`~lmforge.errors.DataError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data import registry
from lmforge.errors import DataError

RECORD_FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")
CORPUS_FORMATS = (".txt",)
ALL_FORMATS = RECORD_FORMATS + CORPUS_FORMATS
TEXT_FIELDS = ("text", "code", "content")


def base_suffix(path: Path) -> str:
    """``train.jsonl.gz`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


@dataclass
class DataSource:
    """A resolved data spec: the files to read and, for a single file, an optional ``split`` column filter."""

    spec: str
    files: list[Path]
    split: str | None = None
    filter_split_column: bool = False
    bundled: registry.BundledDataset | None = None

    @property
    def name(self) -> str:
        return self.spec


@dataclass
class Record:
    data: dict
    file: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Problems:
    """Collects problems; :meth:`raise_if_any` turns them into one error."""

    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.items.append(message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str, fix: str | None = None) -> None:
        if self.items:
            count = len(self.items)
            raise DataError(f"{what}: {count} problem{'s' if count > 1 else ''}", problems=self.items, fix=fix)


def _bundled_names() -> str:
    return ", ".join(registry.BUNDLED)


def _files_in_dir(folder: Path, split: str | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and base_suffix(p) in ALL_FORMATS)
    if split:
        return [p for p in files if p.name.split(".")[0] == split]
    train = [p for p in files if p.name.split(".")[0] == "train"]
    return train or files


def resolve(spec: str, *, default_split: str | None = None) -> DataSource:
    """Turn a data spec into files. Raises a DataError that names the spec and the way to fix it."""
    spec = str(spec)
    path = Path(spec).expanduser()
    split = None
    if not path.exists():
        head, split = registry.split_spec(spec)
        path = Path(head).expanduser()
        if not path.exists():
            dataset = registry.lookup(head)
            if dataset is None:
                hint = registry.suggest(head)
                raise DataError(
                    f"data '{spec}' not found: no such file or folder, and no bundled dataset named '{head}'",
                    fix=(f"did you mean '{hint}'? " if hint else "")
                    + f"give a path to a file, or a bundled dataset ({_bundled_names()}); see `lmforge datasets list`",
                )
            split = split or default_split or dataset.default_split
            if split not in dataset.splits:
                raise DataError(
                    f"bundled dataset '{head}' has no split '{split}'",
                    fix=f"use one of: {', '.join(f'{head}:{s}' for s in dataset.splits)}",
                )
            return DataSource(spec, dataset.files(split), split=split, bundled=dataset)
    if path.is_dir():
        files = _files_in_dir(path, split)
        if not files:
            wanted = f"'{split}.*' files" if split else f"data files ({', '.join(ALL_FORMATS)}, optionally .gz)"
            raise DataError(f"folder '{path}' holds no {wanted}", fix="point at a file, or put the data files there")
        return DataSource(spec, files, split=split)
    if base_suffix(path) not in ALL_FORMATS:
        raise DataError(
            f"'{path}' has an unsupported format '{''.join(path.suffixes) or '(none)'}'",
            fix=f"use one of {', '.join(ALL_FORMATS)} (optionally gzip'd, .gz)",
        )
    return DataSource(spec, [path], split=split, filter_split_column=split is not None)


def _check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise DataError(f"'{path}' is empty", fix="give a file with data in it")


def _decode_lines(path: Path, problems: Problems) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each line; invalid UTF-8 becomes a problem naming file:line."""
    with open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(f"{path}:{number}: invalid UTF-8 at byte {exc.start} (save the file as UTF-8)")


def decode_text(path: Path, problems: Problems) -> str | None:
    """The whole file as text (a UTF-8 BOM dropped); invalid UTF-8 becomes a problem naming file:line (None)."""
    with open_binary(path) as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.add(f"{path}:{line}: invalid UTF-8 at byte {exc.start} (save the file as UTF-8)")
        return None


def json_objects(path: Path, lines: Iterable[tuple[int, str]], problems: Problems) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank JSON Lines line; bad lines become problems naming file:line."""
    for number, text in lines:
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.add(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(value, dict):
            problems.add(f"{path}:{number}: expected a JSON object per line, got {type(value).__name__}")
            continue
        yield number, value


def _read_jsonl(path: Path, problems: Problems) -> Iterator[Record]:
    for number, value in json_objects(path, _decode_lines(path, problems), problems):
        yield Record(value, path, number)


def _read_delimited(path: Path, problems: Problems, delimiter: str) -> Iterator[Record]:
    text = decode_text(path, problems)
    if text is None:
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        problems.add(f"{path}:1: no header row (the first row must name the columns)")
        return
    for row in reader:
        if None in row:  # more cells than header columns
            problems.add(f"{path}:{reader.line_num}: {len(row[None])} more cells than the header has columns")
            continue
        yield Record(dict(row), path, reader.line_num)


def _read_parquet(path: Path, problems: Problems) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types (ArrowInvalid, OSError, ...) for corrupt files
        problems.add(f"{path}: not a readable parquet file ({exc})")
        return
    for index, row in enumerate(table.to_pylist(), start=1):
        yield Record(row, path, index)


def read_records(source: DataSource, problems: Problems | None = None) -> list[Record]:
    """Read every record of a source; collect all problems and raise one DataError.

    With ``problems`` given, reading problems are added there and the caller raises (after its own checks)."""
    own = problems is None
    problems = Problems() if problems is None else problems
    records: list[Record] = []
    for path in source.files:
        _check_nonempty(path)
        kind = base_suffix(path)
        if kind == ".jsonl":
            records.extend(_read_jsonl(path, problems))
        elif kind in (".csv", ".tsv"):
            records.extend(_read_delimited(path, problems, "," if kind == ".csv" else "\t"))
        elif kind == ".parquet":
            records.extend(_read_parquet(path, problems))
        else:
            raise DataError(
                f"'{path}' is a plain-text corpus, but this command needs records (text and label fields)",
                fix="give a .jsonl, .csv, .tsv or .parquet file",
            )
    if own:
        problems.raise_if_any(f"cannot read {source.spec}")
    if source.filter_split_column:
        if records and not any("split" in r.data for r in records):
            raise DataError(
                f"'{source.spec}' asks for split '{source.split}', but the file has no 'split' field",
                fix=f"drop ':{source.split}', or add a 'split' field to each row",
            )
        records = [r for r in records if str(r.data.get("split")) == source.split]
    if not records and not problems:
        raise DataError(f"no records in {source.spec}", fix="check the file and the split name")
    return records


def corpus_files(specs: list[str]) -> list[Path]:
    """The files behind corpus specs (paths or bundled names), in order."""
    files: list[Path] = []
    for spec in specs:
        files.extend(resolve(spec).files)
    return files


def iter_documents(files: list[Path]) -> Iterator[list[str]]:
    """Stream documents (lists of non-empty lines) from corpus files; a blank line ends a document.

    Record files (.jsonl/.csv/...) are read as one document per record, from the first of the fields ``text``,
    ``code``, ``content`` they have (so the bundled ``code`` rows can join a tokenizer's training text); a bundled
    dataset may name its own ``corpus_fields`` instead, each a document (both sides of the ``translation`` pairs).
    """
    problems = Problems()
    for path in files:
        _check_nonempty(path)
        if base_suffix(path) != ".txt":
            owner = registry.owner(path)
            named = owner.corpus_fields if owner is not None else ()
            for record in read_records(DataSource(str(path), [path])):
                fields = [f for f in named if isinstance(record.data.get(f), str)] or \
                    [f for f in TEXT_FIELDS if isinstance(record.data.get(f), str)][:1]
                if not fields:
                    problems.add(f"{record.where}: no text field ({', '.join(named or TEXT_FIELDS)}); "
                                 f"fields present: {', '.join(record.data) or '(none)'}")
                    continue
                for field in fields:
                    lines = [line.rstrip() for line in record.data[field].splitlines()]
                    lines = [line for line in lines if line]  # rstripped: a blank or spaces-only line is now empty
                    if lines:
                        yield lines
            continue
        doc: list[str] = []
        for _, text in _decode_lines(path, problems):
            line = text.strip()
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc
    problems.raise_if_any("cannot read the corpus")


def iter_corpus_lines(files: list[Path]) -> Iterator[str]:
    """Every non-empty line of a corpus with its line break, as the token cache will see it (tokenizer training)."""
    for doc in iter_documents(files):
        for line in doc:
            yield line + "\n"
