"""Where a knowledge base's passages live: one folder holding ``kb.sqlite`` (the passages and an FTS5 full-text index
ranked by BM25), ``vectors.f16`` (their sentence vectors, float16, row i = the passage whose ``row`` is i, read through
a memory map) and ``kb.json`` (the embedding model and its settings).

:class:`PassageStore` is the small interface the rest of lmforge uses (add passages with their vectors, BM25 search,
vector search, fetch by row). :class:`LocalStore` is the embedded implementation; a knowledge base that outgrows one
machine implements the same five methods on an engine built for it (OpenSearch / Elasticsearch: BM25 and k-NN in one
index; or Qdrant, pgvector) and nothing above it changes.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lmforge.errors import DataError, LmforgeError

DB, VECTORS, META = "kb.sqlite", "vectors.f16", "kb.json"
WORD = re.compile(r"\w+", re.UNICODE)
FLOAT32_CACHE_BYTES = 256 << 20  # vectors up to this size (in float32: ~170k x 384) are searched from memory


@dataclass
class Passage:
    id: str
    title: str
    text: str
    row: int = -1  # position in the store (and in the vectors)


class PassageStore(Protocol):
    def add(self, passages: list[Passage], vectors: np.ndarray) -> None: ...
    def known(self, ids: list[str]) -> set[str]: ...
    def bm25(self, query: str, k: int) -> list[tuple[int, float]]: ...
    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]: ...
    def fetch(self, rows: list[int]) -> list[Passage]: ...


def is_kb(path: str | Path) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / DB).is_file()


class LocalStore:
    """SQLite with FTS5 (porter stemming) for BM25 and a memory-mapped float16 matrix for cosine search."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder, self.dim = Path(folder), dim
        self.db = sqlite3.connect(self.folder / DB, check_same_thread=False)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS passages (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
            "title TEXT NOT NULL, text TEXT NOT NULL);"
            "CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(title, text, content='passages', "
            "content_rowid='row', tokenize='porter unicode61');")
        self.count = self.db.execute("SELECT COUNT(*) FROM passages").fetchone()[0]
        self._vectors: np.ndarray | None = None
        self._float32: np.ndarray | None = None
        self._trim()

    def _trim(self) -> None:
        """Vectors past the last committed passage (an add interrupted between the two writes) are dropped."""
        path, width = self.folder / VECTORS, self.dim * 2
        if path.exists() and path.stat().st_size > self.count * width:
            with open(path, "r+b") as fh:
                fh.truncate(self.count * width)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None or len(self._vectors) != self.count:
            path = self.folder / VECTORS
            self._vectors = (np.memmap(path, dtype=np.float16, mode="r", shape=(self.count, self.dim))
                             if self.count else np.zeros((0, self.dim), dtype=np.float16))
        return self._vectors

    def add(self, passages: list[Passage], vectors: np.ndarray) -> None:
        if not passages:
            return
        with open(self.folder / VECTORS, "ab") as fh:  # vectors first: rows without a passage are trimmed on open
            fh.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
        rows = [(self.count + i, p.id, p.title, p.text) for i, p in enumerate(passages)]
        with self.db:
            self.db.executemany("INSERT INTO passages (row, id, title, text) VALUES (?, ?, ?, ?)", rows)
            self.db.executemany("INSERT INTO passages_fts (rowid, title, text) VALUES (?, ?, ?)",
                                [(r, title, text) for r, _, title, text in rows])
        self.count += len(passages)

    def known(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found |= {r[0] for r in self.db.execute(f"SELECT id FROM passages WHERE id IN ({marks})", chunk)}
        return found

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        words = WORD.findall(query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))  # any word; BM25 ranks by how many and how rare
        found = self.db.execute("SELECT rowid, bm25(passages_fts) FROM passages_fts WHERE passages_fts MATCH ? "
                                "ORDER BY bm25(passages_fts) LIMIT ?", (match, k)).fetchall()
        return [(int(row), -float(score)) for row, score in found]  # FTS5's bm25() is lower-is-better

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if not self.count:
            return []
        query = vector.astype(np.float32)
        if self.count * self.dim * 4 <= FLOAT32_CACHE_BYTES:  # small enough to keep in float32: one matmul a query
            if self._float32 is None or len(self._float32) != self.count:
                self._float32 = np.asarray(self.vectors, dtype=np.float32)
            scores = self._float32 @ query
        else:
            scores = np.empty(self.count, dtype=np.float32)
            for start in range(0, self.count, 65536):  # float32 a chunk at a time: the map itself stays float16
                scores[start : start + 65536] = self.vectors[start : start + 65536].astype(np.float32) @ query
        top = np.argpartition(-scores, min(k, self.count) - 1)[:k] if self.count > k else np.arange(self.count)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top]

    def fetch(self, rows: list[int]) -> list[Passage]:
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        found = {r[0]: Passage(r[1], r[2], r[3], r[0]) for r in
                 self.db.execute(f"SELECT row, id, title, text FROM passages WHERE row IN ({marks})", rows)}
        return [found[r] for r in rows if r in found]

    def close(self) -> None:
        self.db.close()


def read_meta(folder: Path) -> dict:
    if not is_kb(folder):
        raise LmforgeError(f"no knowledge base at '{folder}'", where=str(folder),
                           fix="build one with `lmforge kb build --docs python-docs-kb --out KB`, or check the path")
    try:
        return json.loads((Path(folder) / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {Path(folder) / META}: {exc}", fix="rebuild the knowledge base") from None
