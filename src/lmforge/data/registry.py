"""The datasets that ship inside the package (copied from real sources; each folder has a README with provenance).

A data spec on the command line is either a path (``train.jsonl``, ``data/``, optionally ``path:split``) or a bundled
name (``movie-reviews``, ``movie-reviews:test``). This module resolves names; :mod:`lmforge.data.readers` reads files.
Each dataset is described by the ``dataset.json`` in its folder.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class BundledDataset:
    name: str
    task: str
    description: str
    license: str
    source: str
    # split name -> file names inside BUNDLED_DIR/name (several files are concatenated, e.g. the corpus)
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_split: str = "train"
    fields: str = "text, label"
    # config defaults for fine-tuning on this dataset, chosen by measurement on its dev split; the user's own settings
    # win (e.g. {"long_inputs": {"strategy": "windows"}}); "why" says what chose them
    recipe: dict = field(default_factory=dict)
    # fields that are plain text when the dataset is read as a pretraining/tokenizer corpus, each its own document
    # (a parallel corpus gives both languages); empty: the first of text/code/content
    corpus_fields: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return BUNDLED_DIR / self.name

    def files(self, split: str | None = None) -> list[Path]:
        return [self.folder / f for f in self.splits[split or self.default_split]]


def _discover() -> dict[str, BundledDataset]:
    """Every folder under ``bundled/`` with a ``dataset.json`` (name, task, description, license, source, fields,
    splits: split name -> its files) is a dataset: adding one is a folder, its files, that file and a README."""
    found = {}
    for meta_path in sorted(BUNDLED_DIR.glob("*/dataset.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["splits"] = {split: tuple(files) for split, files in meta["splits"].items()}
        meta["corpus_fields"] = tuple(meta.get("corpus_fields", ()))
        found[meta["name"]] = BundledDataset(**meta)
    return found


BUNDLED: dict[str, BundledDataset] = _discover()


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"movie-reviews:test"`` -> ``("movie-reviews", "test")``; a bare spec has no split."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return spec, None


def lookup(name: str) -> BundledDataset | None:
    return BUNDLED.get(name)


def suggest(name: str) -> str | None:
    close = difflib.get_close_matches(name, list(BUNDLED), n=1, cutoff=0.6)
    return close[0] if close else None


def owner(path: Path) -> BundledDataset | None:
    """The bundled dataset a file belongs to, if any."""
    dataset = BUNDLED.get(path.parent.name)
    return dataset if dataset is not None and path.parent == dataset.folder else None


def file_size(dataset: BundledDataset) -> int:
    names = {f for files in dataset.splits.values() for f in files}
    return sum((dataset.folder / f).stat().st_size for f in names)
