"""Knowledge bases: passages found by BM25 (SQLite FTS5), by meaning (sentence vectors), or both (reciprocal-rank
fusion), then read by a model that answers from them with citations (:mod:`lmforge.kb.ask`).

``lmforge kb build --docs python-docs-kb --out KB`` reads passages (``text``, optional ``id`` and ``title``), embeds
them with ``minilm`` (mean-pooled, normalized: a sentence-embedding model) and stores both; building again into the
same KB adds only passages whose ids it does not hold. Storage is behind :class:`lmforge.kb.store.PassageStore`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lmforge.data.readers import Problems, read_records, resolve
from lmforge.errors import DataError, LmforgeError
from lmforge.kb.store import DB, META, VECTORS, LocalStore, Passage, is_kb, read_meta

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
    ``file:line``) and ``title`` optional. Every problem is reported with its file and line."""
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
    return passages


class KnowledgeBase:
    """A KB folder: open an existing one with :meth:`open`, make or extend one with :meth:`build`."""

    def __init__(self, folder: Path, meta: dict, embedder=None) -> None:
        self.folder, self.meta = Path(folder), meta
        self.store = LocalStore(self.folder, int(meta["dim"]))
        self._embedder = embedder

    @classmethod
    def open(cls, folder: str | Path) -> KnowledgeBase:
        return cls(Path(folder), read_meta(Path(folder)))

    @classmethod
    def build(cls, folder: str | Path, docs: list[str], *, model: str = "minilm",
              max_length: int = EMBED_MAX_LENGTH, precision: str = "int8", show_progress: bool = True) -> dict:
        """Add the passages of ``docs`` to the KB at ``folder`` (made if missing); passages whose id it already
        holds are skipped, so only new ones are embedded. Returns counts and timings."""
        from lmforge.kb.embed import SentenceEmbedder

        started = time.perf_counter()
        if precision not in PRECISIONS:
            raise LmforgeError(f"unknown precision '{precision}'", where="--precision",
                               fix=f"use one of {', '.join(PRECISIONS)}")
        folder = Path(folder)
        if folder.exists() and not is_kb(folder) and any(folder.iterdir()):
            raise LmforgeError(f"'{folder}' exists and is not a knowledge base", where="--out",
                               fix="give a new folder, or the folder of a KB to add to")
        passages = [p for spec in docs for p in read_passages(spec)]
        if is_kb(folder):
            kb = cls.open(folder)
            if (max_length, model, precision) != (kb.meta["max_length"], kb.meta["model"], kb_precision(kb.meta)):
                log.info("adding with the KB's own embedding settings (%s, %d tokens, %s)", kb.meta["model"],
                         kb.meta["max_length"], kb_precision(kb.meta))
        else:
            embedder = SentenceEmbedder(model, max_length=max_length, precision=precision)
            folder.mkdir(parents=True, exist_ok=True)
            meta = {"format": 1, "model": model, "dim": embedder.dim, "max_length": embedder.max_length,
                    "precision": embedder.precision, "pooling": "mean, normalized",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (folder / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            kb = cls(folder, meta, embedder)
        seen: set[str] = set()
        fresh = []
        for p in passages:  # a repeated id within the new documents: the first one counts
            if p.id not in seen:
                seen.add(p.id)
                fresh.append(p)
        known = kb.store.known([p.id for p in fresh])
        new = [p for p in fresh if p.id not in known]
        embed_s = kb._add(new, show_progress)
        result = {"kb": str(folder), "read": len(passages), "added": len(new), "skipped": len(passages) - len(new),
                  "precision": kb_precision(kb.meta),
                  "passages": kb.store.count, "embed_s": round(embed_s, 1),
                  "seconds": round(time.perf_counter() - started, 1), "size_mb": round(kb.size_bytes() / 1e6, 1)}
        kb.close()
        return result

    def _add(self, passages: list[Passage], show_progress: bool) -> float:
        from lmforge.data.progress import track

        if not passages:
            return 0.0
        started = time.perf_counter()
        chunk = 512  # embed and store a chunk at a time: an interrupted build keeps what it finished
        chunks = [passages[i : i + chunk] for i in range(0, len(passages), chunk)]
        total = sum(len(p.text) for p in passages)
        for part in track(chunks, total, "embedding passages", size=lambda c: sum(len(p.text) for p in c),
                          enabled=show_progress, every=15.0):
            vectors = self.embedder.embed([self.as_text(p) for p in part])
            self.store.add(part, vectors)
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
        return sum((self.folder / f).stat().st_size for f in (DB, VECTORS, META) if (self.folder / f).exists())

    def add(self, passages: list[Passage]) -> int:
        """Add passages (ids it holds are skipped); returns how many were added."""
        known = self.store.known([p.id for p in passages])
        new = [p for p in passages if p.id not in known]
        self._add(new, show_progress=False)
        return len(new)

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
            ranked = sorted(fused.items(), key=lambda item: -item[1])[:k]
        rows = [row for row, _ in ranked]
        similarity = self.store.vectors[rows].astype(np.float32) @ vector if rows else []
        return [Hit(p.id, p.title, p.text, float(score), float(sim), rank)
                for rank, (p, (_, score), sim) in enumerate(zip(self.store.fetch(rows), ranked, similarity), 1)]

    def close(self) -> None:
        self.store.close()


def check_docs(docs: list[str]) -> None:
    if not docs:
        raise DataError("no documents given", where="--docs", fix="give --docs FILE (or a bundled name) at least once")
