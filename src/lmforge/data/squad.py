"""Extractive question-answering data: questions, the context that holds their answer, and the gold answers.

Two formats:

- SQuAD v1.1 JSON (``.json``, optionally ``.gz``): ``{"version", "data": [{"title", "paragraphs": [{"context",
  "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}``, as the official train-v1.1.json and
  dev-v1.1.json files are. (A ``.json`` file of one JSON object per line, as the ``datasets`` library exports, is read
  as JSON Lines.)
- JSON Lines (or parquet) rows with ``question``, ``context`` and ``answers``, either SQuAD-style as the ``datasets``
  library stores them (``{"text": [...], "answer_start": [...]}``) or a list of ``{"text", "answer_start"}``; ``id``
  is optional.

Every answer must sit in its context at ``answer_start`` (``context[start:start + len(text)] == text``). Every problem
is collected, named by ``file:line`` (and the question id), and raised as one :class:`~lmforge.errors.DataError`.
The bundled ``squad-sample`` (11 questions) is a smoke check of the format only: bring real SQuAD files for a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.readers import (
    DataSource,
    Problems,
    base_suffix,
    decode_text,
    json_objects,
    read_records,
    resolve,
)
from lmforge.errors import DataError

_ID = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]  # gold answer texts (SQuAD dev files have several per question)
    answer_starts: list[int]  # character offset of each in the context
    where: str  # file:line (question id), for messages


@dataclass
class QAData:
    spec: str
    examples: list[QAExample]
    files: list[str]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: list[int], spec: str) -> QAData:
        return QAData(spec, [self.examples[i] for i in indices], self.files)

    @property
    def questions(self) -> list[str]:
        return [e.question for e in self.examples]

    @property
    def contexts(self) -> list[str]:
        return [e.context for e in self.examples]


def resolve_qa(spec: str) -> DataSource:
    """The files behind a QA data spec: a SQuAD ``.json`` file, or whatever :func:`lmforge.data.readers.resolve`
    accepts (a ``.jsonl``/``.parquet`` file, a bundled name such as ``squad-sample``)."""
    path = Path(str(spec)).expanduser()
    if path.is_file() and base_suffix(path) == ".json":
        return DataSource(str(spec), [path])
    return resolve(str(spec))


def load_qa(spec: str) -> QAData:
    """Read and validate every question; raise one DataError listing every problem (file:line, question id)."""
    source = resolve_qa(spec)
    problems = Problems()
    examples: list[QAExample] = []
    for path in source.files:
        if path.stat().st_size == 0:
            raise DataError(f"'{path}' is empty", fix="give a SQuAD v1.1 JSON file or JSON Lines of questions")
        if base_suffix(path) == ".json":
            examples.extend(_read_json_file(path, problems))
        else:
            for record in read_records(DataSource(str(path), [path]), problems):
                example = _row(record.data, record.where, problems)
                if example:
                    examples.append(example)
    problems.raise_if_any(
        f"cannot use {spec} as question-answering data",
        fix="each question needs a non-empty question and context and at least one answer whose text is found in "
            "the context at its answer_start (SQuAD v1.1 JSON, or JSON Lines with question, context, answers)")
    if not examples:
        raise DataError(f"no questions in {spec}", fix="give a SQuAD v1.1 JSON file or JSON Lines of questions")
    return QAData(str(spec), examples, [str(f) for f in source.files])


# ------------------------------------------------------------------------------------------------ SQuAD JSON
def _read_json_file(path: Path, problems: Problems) -> list[QAExample]:
    text = decode_text(path, problems)
    if text is None:
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # one object per line: JSON Lines
            return _read_json_lines(path, text, problems)
        problems.add(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})")
        return []
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        kind = "an object without a 'data' list" if isinstance(document, dict) else type(document).__name__
        problems.add(f"{path}:1: expected SQuAD JSON ({{\"version\", \"data\": [articles with paragraphs]}}), got "
                     f"{kind}")
        return []
    lines = _id_lines(text)
    examples: list[QAExample] = []
    for a, article in enumerate(document["data"]):
        at = f"{path}: data[{a}]"
        if isinstance(article, dict) and "question" in article and "context" in article:  # flat rows under "data"
            example = _row(article, _where(path, lines, article.get("id"), at), problems)
            if example:
                examples.append(example)
            continue
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            problems.add(f"{at}: an article needs a 'paragraphs' list")
            continue
        for p, paragraph in enumerate(paragraphs):
            at_p = f"{at}.paragraphs[{p}]"
            if not isinstance(paragraph, dict):
                problems.add(f"{at_p}: a paragraph must be an object with 'context' and 'qas'")
                continue
            context, qas = paragraph.get("context"), paragraph.get("qas")
            if not isinstance(qas, list):
                problems.add(f"{at_p}: no 'qas' list")
                continue
            if not isinstance(context, str) or not context.strip():
                problems.add(f"{at_p}: 'context' must be a non-empty string, got {context!r:.40}")
                continue
            for q, qa in enumerate(qas):
                at_q = f"{at_p}.qas[{q}]"
                if not isinstance(qa, dict):
                    problems.add(f"{at_q}: a question must be an object with 'id', 'question' and 'answers'")
                    continue
                example = _question(qa, context, _where(path, lines, qa.get("id"), at_q), problems)
                if example:
                    examples.append(example)
    return examples


def _id_lines(text: str) -> dict[str, int]:
    """The line of each question id in the file (ids are unique in SQuAD), so messages can point at it."""
    found: dict[str, int] = {}
    line, last = 1, 0
    for match in _ID.finditer(text):
        line += text.count("\n", last, match.start())
        last = match.start()
        found.setdefault(match.group(1), line)
    return found


def _where(path: Path, lines: dict[str, int], qid, fallback: str) -> str:
    if isinstance(qid, str) and qid in lines:
        return f"{path}:{lines[qid]} (question {qid})"
    return f"{fallback}" + (f" (question {qid})" if qid is not None else "")


def _read_json_lines(path: Path, text: str, problems: Problems) -> list[QAExample]:
    rows = json_objects(path, enumerate(text.splitlines(), start=1), problems)
    return [example for number, row in rows if (example := _row(row, f"{path}:{number}", problems))]


# ------------------------------------------------------------------------------------------------ one question
def _row(row: dict, where: str, problems: Problems) -> QAExample | None:
    """A flat row: question, context, answers (dict of lists, or list of objects), optional id."""
    missing = [f for f in ("question", "context", "answers") if f not in row]
    if missing:
        problems.add(f"{where}: no {', '.join(repr(m) for m in missing)} field{'s' if len(missing) > 1 else ''} "
                     f"(fields present: {', '.join(map(str, row)) or '(none)'})")
        return None
    context = row["context"]
    if not isinstance(context, str) or not context.strip():
        problems.add(f"{where}: 'context' must be a non-empty string, got {context!r:.40}")
        return None
    answers = row["answers"]
    if isinstance(answers, dict):  # the datasets library's layout: {"text": [...], "answer_start": [...]}
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            problems.add(f"{where}: 'answers' as an object needs lists 'text' and 'answer_start' of the same length")
            return None
        answers = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if "id" in row and row["id"] is not None and f"(question {row['id']})" not in where:
        where = f"{where} (question {row['id']})"
    return _question({**row, "answers": answers}, context, where, problems)


def _question(qa: dict, context: str, where: str, problems: Problems) -> QAExample | None:
    question, answers = qa.get("question"), qa.get("answers")
    if not isinstance(question, str) or not question.strip():
        problems.add(f"{where}: 'question' must be a non-empty string, got {question!r:.40}")
        return None
    if qa.get("is_impossible") or (isinstance(answers, list) and not answers):
        problems.add(f"{where}: no answers (unanswerable questions, as in SQuAD 2.0, are not supported: extractive "
                     "QA here always answers from the context)")
        return None
    if not isinstance(answers, list):
        problems.add(f"{where}: 'answers' must be a list of {{\"text\", \"answer_start\"}}, got {answers!r:.40}")
        return None
    texts, starts = [], []
    for k, answer in enumerate(answers):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.add(f"{where}: answer {k}: 'text' must be a non-empty string, got {text!r:.40}")
            return None
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            problems.add(f"{where}: answer {k}: 'answer_start' must be a character offset (an integer >= 0), got "
                         f"{start!r:.20}")
            return None
        found = context[start : start + len(text)]
        if found != text:
            elsewhere = context.find(text)
            hint = f"; the text occurs at {elsewhere}" if elsewhere >= 0 else "; the text is not in the context"
            problems.add(f"{where}: answer {k} {text!r:.60} is not at answer_start {start} of the context (found "
                         f"{found!r:.60}{hint})")
            return None
        texts.append(text)
        starts.append(start)
    qid = qa.get("id")
    return QAExample(str(qid) if qid is not None else where, question, context, texts, starts, where)
