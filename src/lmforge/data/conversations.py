"""Multi-turn conversations (``{"messages": [{"role", "content"}, ...]}``) and code rows: read and validate."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.readers import Problems, read_records, resolve

ROLES = ("system", "user", "assistant")


@dataclass
class Conversations:
    spec: str
    items: list[list[dict[str, str]]]
    wheres: list[str]
    files: list[str]

    def __len__(self) -> int:
        return len(self.items)


def load_conversations(spec: str, field: str = "messages") -> Conversations:
    source = resolve(spec)
    problems = Problems()
    records = read_records(source, problems)
    items, wheres = [], []
    for record in records:
        messages = record.data.get(field)
        if not isinstance(messages, list) or not messages:
            present = ", ".join(record.data) or "(none)"
            problems.add(f"{record.where}: '{field}' must be a non-empty list of messages (fields present: {present})")
            continue
        bad = None
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                bad = f"message {i} must be {{\"role\": one of {'/'.join(ROLES)}, \"content\": text}}, got {m!r:.60}"
                break
        if bad is None and not any(m["role"] == "assistant" for m in messages):
            bad = "no assistant message: nothing to learn from"
        if bad:
            problems.add(f"{record.where}: {bad}")
            continue
        items.append([{"role": m["role"], "content": m["content"]} for m in messages])
        wheres.append(record.where)
    problems.raise_if_any(f"cannot use {spec}", fix="each row needs a 'messages' list of {role, content} objects")
    return Conversations(spec, items, wheres, [str(f) for f in source.files])


@dataclass
class CodeRows:
    spec: str
    rows: list[dict]
    files: list[str]


def load_code(spec: str, field: str = "code") -> CodeRows:
    source = resolve(spec)
    problems = Problems()
    records = read_records(source, problems)
    rows = []
    for record in records:
        code = record.data.get(field)
        if not isinstance(code, str) or not code.strip():
            present = ", ".join(record.data) or "(none)"
            problems.add(f"{record.where}: no '{field}' text (fields present: {present})")
            continue
        rows.append({**record.data, "_where": record.where})
    problems.raise_if_any(f"cannot use {spec}", fix=f"each row needs a '{field}' field with Python source")
    return CodeRows(spec, rows, [str(f) for f in source.files])


@dataclass
class Pairs:
    """Source -> target text pairs (translation, summarization)."""

    spec: str
    sources: list[str]
    targets: list[str]
    files: list[str]

    def __len__(self) -> int:
        return len(self.sources)


def load_pairs(spec: str, source_field: str, target_field: str) -> Pairs:
    source = resolve(spec)
    problems = Problems()
    sources, targets = [], []
    for record in read_records(source, problems):
        values = [record.data.get(source_field), record.data.get(target_field)]
        bad = [name for name, value in zip((source_field, target_field), values)
               if not isinstance(value, str) or not value.strip()]
        if bad:
            present = ", ".join(record.data) or "(none)"
            problems.add(f"{record.where}: no '{bad[0]}' text (fields present: {present})")
            continue
        sources.append(values[0].strip())
        targets.append(values[1].strip())
    problems.raise_if_any(f"cannot use {spec}", fix="name the right fields with --source-field / --target-field "
                          f"(now '{source_field}' and '{target_field}')")
    return Pairs(spec, sources, targets, [str(f) for f in source.files])
