"""Knowledge bases: passages found by BM25 (SQLite FTS5), by meaning (sentence vectors), or both (reciprocal-rank
fusion), then read by a model that answers from them with citations (:mod:`lmforge.kb.ask`).

``lmforge kb build --docs python-docs-kb --out KB`` reads passages (``text``, optional ``id`` and ``title``), embeds
them with ``minilm`` (mean-pooled, normalized: a sentence-embedding model) and stores both; building again into the
same KB adds only passages whose ids it does not hold. Storage is behind :class:`lmforge.kb.store.PassageStore`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lmforge.data.readers import Problems, read_records, resolve
from lmforge.errors import DataError, LmforgeError
from lmforge.kb.location import is_kb, open_store, read_meta  # noqa: F401 - is_kb, read_meta: the API
from lmforge.kb.store import Passage, PassageStore

log = logging.getLogger("lmforge")

Mode = Literal["bm25", "dense", "hybrid"]
MODES = ("bm25", "dense", "hybrid")
PRECISIONS = ("int8", "float32")
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al. 2009): fused score = sum of 1 / (60 + rank)
EMBED_MAX_LENGTH = 128  # tokens of each passage embedded (its title and first ~100 words; BM25 reads all of it)


@dataclass
class Hit:
    id: str
    title: str
    text: str
    score: float  # the mode's own: BM25, cosine similarity, or the fused reciprocal-rank score
    similarity: float  # cosine similarity to the question, whatever the mode (what "not found" is judged by)
    rank: int

    def as_dict(self) -> dict:
        return asdict(self)


def kb_precision(meta: dict) -> str:
    """How a KB's vectors were computed: ``int8`` or ``float32`` (KBs from before the setting: float32). Questions are
    embedded the same way, so both sides of a comparison come from one model."""
    return meta.get("precision", "float32")


def read_passages(spec: str) -> list[Passage]:
    """Passages from a .jsonl/.csv/.tsv/.parquet file or bundled dataset: ``text`` required; ``id`` (default
    ``file:line``) and ``title`` optional. Every problem is reported with its file and line. A folder is read as
    documents (:mod:`lmforge.kb.documents`)."""
    return read_docs(spec)[0]


def read_docs(spec: str) -> tuple[list[Passage], list[str]]:
    """(passages, a line per file skipped) of a ``--docs`` spec: a passage file, a bundled name or a folder."""
    if Path(spec).expanduser().is_dir():
        from lmforge.kb.documents import read_folder

        return read_folder(Path(spec).expanduser(), lambda path: read_passages(str(path)))
    source = resolve(spec)
    problems = Problems()
    passages = []
    for record in read_records(source, problems):
        data = record.data
        text, title = data.get("text"), data.get("title", "")
        if not isinstance(text, str) or not text.strip():
            present = ", ".join(data) or "(none)"
            problems.add(f"{record.where}: no 'text' (fields present: {present})")
            continue
        if not isinstance(title, str):
            problems.add(f"{record.where}: 'title' must be text")
            continue
        pid = data.get("id")
        if pid is not None and (not isinstance(pid, str | int) or not str(pid).strip()):
            problems.add(f"{record.where}: 'id' must be a non-empty string or number")
            continue
        passages.append(Passage(str(pid) if pid is not None else f"{record.file.name}:{record.line}",
                                title.strip(), text.strip()))
    problems.raise_if_any(f"cannot read passages from {spec}",
                          fix="each row needs a 'text' field; 'id' and 'title' are optional")
    return passages, []


class KnowledgeBase:
    """A knowledge base in a :class:`~lmforge.kb.store.PassageStore`: open one with :meth:`open`, make or extend one
    with :meth:`build`."""

    def __init__(self, store: PassageStore, embedder=None, meta: dict | None = None) -> None:
        """``meta``: the settings of a KB being made (not in the store until its first write ends)."""
        self.store = store
        self.meta = store.meta() if meta is None else meta
        self._embedder = embedder

    @classmethod
    def open(cls, kb: str | Path, store: str | None = None) -> KnowledgeBase:
        """The KB folder ``kb``, or with ``store`` (a PostgreSQL URL) the KB named ``kb`` in that database."""
        return cls(open_store(kb, store))

    @property
    def where(self) -> str:
        return self.store.where

    @classmethod
    def build(cls, kb: str | Path, docs: list[str], *, store: str | None = None, model: str = "minilm",
              max_length: int = EMBED_MAX_LENGTH, precision: str = "int8", show_progress: bool = True) -> dict:
        """Add the passages of ``docs`` to the KB ``kb`` (made if missing); passages whose id it already holds are
        skipped, so only new ones are embedded. All or nothing: a build that fails or is killed adds none, and a
        second build of the same KB at the same time fails at once. Returns counts and timings."""
        from lmforge.kb.embed import SentenceEmbedder

        started = time.perf_counter()
        if precision not in PRECISIONS:
            raise LmforgeError(f"unknown precision '{precision}'", where="--precision",
                               fix=f"use one of {', '.join(PRECISIONS)}")
        target = open_store(kb, store)
        if not store:
            from lmforge.kb.local import leftovers_only

            folder = Path(kb)
            if folder.exists() and (not folder.is_dir() or not target.exists() and not leftovers_only(folder)):
                raise LmforgeError(f"'{folder}' exists and is not a knowledge base", where="--out",
                                   fix="give a new folder, or the folder of a KB to add to")
        passages, skipped_files = [], []
        for spec in docs:
            found, skipped = read_docs(spec)
            passages += found
            skipped_files += skipped
        meta = None
        if target.exists():
            base = cls(target)
            if (max_length, model, precision) != (base.meta["max_length"], base.meta["model"], kb_precision(base.meta)):
                log.info("adding with the KB's own embedding settings (%s, %d tokens, %s)", base.meta["model"],
                         base.meta["max_length"], kb_precision(base.meta))
        else:
            embedder = SentenceEmbedder(model, max_length=max_length, precision=precision)
            meta = {"format": 1, "model": model, "dim": embedder.dim, "max_length": embedder.max_length,
                    "precision": embedder.precision, "pooling": "mean, normalized",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            base = cls(target, embedder, meta)
        seen: set[str] = set()
        fresh = []
        for p in passages:  # a repeated id within the new documents: the first one counts
            if p.id not in seen:
                seen.add(p.id)
                fresh.append(p)
        known = target.known([p.id for p in fresh]) if meta is None else set()
        new = [p for p in fresh if p.id not in known]
        embed_s = base._add(new, show_progress, meta=meta)
        result = {"kb": target.where, "read": len(passages), "added": len(new), "skipped": len(passages) - len(new),
                  "skipped_files": skipped_files, "precision": kb_precision(base.meta),
                  "passages": target.count, "embed_s": round(embed_s, 1),
                  "seconds": round(time.perf_counter() - started, 1), "size_mb": round(target.size_bytes() / 1e6, 1)}
        target.close()
        return result

    def _add(self, passages: list[Passage], show_progress: bool, meta: dict | None = None) -> float:
        """Embed and store ``passages`` in one write (``meta``: the new KB's settings)."""
        from lmforge.data.progress import track

        started = time.perf_counter()
        if not passages and meta is None:
            return 0.0
        chunk = 256  # embedded a chunk at a time (progress, bounded memory); stored in one write
        chunks = [passages[i : i + chunk] for i in range(0, len(passages), chunk)]
        with self.store.writing(meta) as add:
            for part in track(chunks, len(passages), "embedding passages", enabled=show_progress and bool(passages),
                              every=15.0, unit="passages"):
                add(part, self.embedder.embed([self.as_text(p) for p in part]))
        return time.perf_counter() - started

    @staticmethod
    def as_text(p: Passage) -> str:
        return f"{p.title}\n{p.text}" if p.title else p.text

    @property
    def embedder(self):
        if self._embedder is None:
            from lmforge.kb.embed import SentenceEmbedder

            self._embedder = SentenceEmbedder(self.meta["model"], max_length=int(self.meta["max_length"]),
                                              precision=kb_precision(self.meta))
            if self._embedder.precision != kb_precision(self.meta):
                log.warning("this PyTorch has no int8 CPU kernels: questions are embedded in float32, the KB's "
                            "passages were in int8 (rankings may move slightly)")
        return self._embedder

    def size_bytes(self) -> int:
        return self.store.size_bytes()

    def add(self, passages: list[Passage]) -> int:
        """Add passages (ids it holds are skipped) in one write; returns how many were added."""
        known = self.store.known([p.id for p in passages])
        new = [p for p in passages if p.id not in known]
        self._add(new, show_progress=False)
        return len(new)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[KnowledgeBase]:
        """A throwaway copy of this KB (same embedder) to add to: evaluation adds its answers there."""
        with self.store.scratch() as copy:
            yield KnowledgeBase(copy, self._embedder)

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid") -> list[Hit]:
        """The ``k`` best passages for ``query``."""
        if mode not in MODES:
            raise LmforgeError(f"unknown search mode '{mode}'", where="--mode", fix=f"use one of {', '.join(MODES)}")
        if not query.strip():
            raise LmforgeError("the question is empty", fix="ask something")
        vector = self.embedder.embed([query])[0]
        if mode == "bm25":
            ranked = self.store.bm25(query, k)
        elif mode == "dense":
            ranked = self.store.nearest(vector, k)
        else:
            depth = max(50, 4 * k)
            fused: dict[int, float] = {}
            for found in (self.store.bm25(query, depth), self.store.nearest(vector, depth)):
                for rank, (row, _) in enumerate(found, 1):
                    fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
            ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        rows = [row for row, _ in ranked]
        similarity = self.store.vectors_of(rows) @ vector if rows else []
        return [Hit(p.id, p.title, p.text, float(score), float(sim), rank)
                for rank, (p, (_, score), sim) in enumerate(zip(self.store.fetch(rows), ranked, similarity), 1)]

    def close(self) -> None:
        self.store.close()


def check_docs(docs: list[str]) -> None:
    if not docs:
        raise DataError("no documents given", where="--docs", fix="give --docs FILE (or a bundled name) at least once")
