"""Text + label data (classification): read, validate every row, and check splits against each other."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lmforge.data.readers import Problems, read_records, resolve
from lmforge.errors import DataError


@dataclass
class TextLabelData:
    spec: str
    texts: list[str]
    labels: list[str]
    wheres: list[str]  # file:line of each row, for messages
    files: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> Counter:
        return Counter(self.labels)

    def subset(self, indices: list[int], spec: str) -> TextLabelData:
        return TextLabelData(
            spec,
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            [self.wheres[i] for i in indices],
            self.files,
        )


def _fields(record_data: dict) -> str:
    return ", ".join(map(str, record_data)) or "(none)"


def load_text_label(
    spec: str, text_field: str = "text", label_field: str | None = "label", *, default_split: str | None = None
) -> TextLabelData:
    """Read labeled rows. Every problem is collected: missing fields (naming the fields present), empty text,
    non-string values. ``label_field=None`` reads texts only (labels become empty strings)."""
    source = resolve(spec, default_split=default_split)
    problems = Problems()
    records = read_records(source, problems)
    texts, labels, wheres = [], [], []
    for record in records:
        data = record.data
        if text_field not in data:
            problems.add(f"{record.where}: no '{text_field}' field (fields present: {_fields(data)})")
            continue
        text = data[text_field]
        if not isinstance(text, str) or not text.strip():
            problems.add(f"{record.where}: '{text_field}' must be a non-empty string, got {text!r:.40}")
            continue
        label = ""
        if label_field is not None:
            if label_field not in data:
                problems.add(f"{record.where}: no '{label_field}' field (fields present: {_fields(data)})")
                continue
            value = data[label_field]
            if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, (list, dict)):
                problems.add(f"{record.where}: '{label_field}' must be a label name or number, got {value!r:.40}")
                continue
            label = str(value).strip()
        texts.append(text)
        labels.append(label)
        wheres.append(record.where)
    naming = (f"--text-field / --label-field (now '{text_field}' and '{label_field}')" if label_field is not None
              else f"--text-field (now '{text_field}')")
    problems.raise_if_any(
        f"cannot use {spec}",
        fix=f"fix the rows above, or name the right columns with {naming}",
    )
    return TextLabelData(spec, texts, labels, wheres, [str(f) for f in source.files])


def check_class_counts(data: TextLabelData, min_count: int) -> None:
    """Every class needs enough examples to learn from (and for a stratified dev split)."""
    counts = data.counts()
    if len(counts) < 2:
        only = next(iter(counts), "(none)")
        raise DataError(
            f"{data.spec} has only one label ('{only}'); classification needs at least two",
            fix="check the label field, or add examples of the other classes",
        )
    small = sorted((n, label) for label, n in counts.items() if n < min_count)
    if small:
        raise DataError(
            f"{data.spec}: {len(small)} class{'es' if len(small) > 1 else ''} with fewer than {min_count} examples",
            problems=[f"'{label}': {n} example{'s' if n != 1 else ''}" for n, label in small],
            fix="add examples, merge or drop those classes, or lower the bound with --set min_examples_per_class=N",
        )


def check_labels_known(data: TextLabelData, known: list[str], role: str) -> None:
    """A label in eval/test data that training never saw cannot be predicted: say which, and where."""
    known_set = set(known)
    unknown: dict[str, list[str]] = {}
    for label, where in zip(data.labels, data.wheres):
        if label not in known_set:
            unknown.setdefault(label, []).append(where)
    if unknown:
        raise DataError(
            f"{role} data {data.spec} has {len(unknown)} label{'s' if len(unknown) > 1 else ''} "
            f"that training never saw",
            problems=[
                f"'{label}' ({len(places)} row{'s' if len(places) > 1 else ''}, first at {places[0]})"
                for label, places in sorted(unknown.items())
            ],
            fix=f"the model knows: {', '.join(known)}; fix the labels or add them to the training data",
        )
