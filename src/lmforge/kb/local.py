"""The embedded knowledge-base store: one folder, no server. ``kb.sqlite`` holds the passages and an FTS5 index (porter
stemming, ranked by BM25), ``vectors.f16`` their sentence vectors (float16, row i = the passage whose ``row`` is i,
read through a memory map), ``kb.json`` the embedding settings.

A build holds ``.lock`` (flock: a second build fails at once). It appends its vectors past the last committed row,
where no reader looks, and inserts its passages in one transaction at the end; ``kb.json`` is written last. A build
killed on the way leaves the rows readers see as they were: the next build trims the vectors nobody committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmforge.errors import DataError
from lmforge.kb.store import AddPassages, Passage, busy, not_a_kb, query_words, top_k

DB, VECTORS, META, LOCK = "kb.sqlite", "vectors.f16", "kb.json", ".lock"
OWN_FILES = (DB, VECTORS, META, LOCK, DB + "-journal", META + ".tmp")  # what a KB folder (or a killed build) holds
FLOAT32_CACHE_BYTES = 256 << 20  # vectors up to this size (in float32: ~170k x 384) are searched from memory
COUNT = "SELECT COALESCE(MAX(row) + 1, 0) FROM passages"  # rows committed (rows are 0..n-1)
SCHEMA = ("CREATE TABLE IF NOT EXISTS passages (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
          "title TEXT NOT NULL, text TEXT NOT NULL);"
          "CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(title, text, content='passages', "
          "content_rowid='row', tokenize='porter unicode61');")


class LocalStore:
    """SQLite with FTS5 for BM25 and a memory-mapped float16 matrix for cosine search."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.where = str(self.folder)
        self._db: sqlite3.Connection | None = None
        self._meta: dict | None = None
        self._count = -1
        self._vectors: np.ndarray | None = None
        self._float32: np.ndarray | None = None

    def exists(self) -> bool:
        return (self.folder / META).is_file() and (self.folder / DB).is_file()

    def meta(self) -> dict:
        if self._meta is None:
            if not self.exists():
                raise not_a_kb(f"'{self.folder}'")
            try:
                self._meta = json.loads((self.folder / META).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read {self.folder / META}: {exc}", fix="rebuild the knowledge base") from None
        return self._meta

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _connect(self.folder / DB)
        return self._db

    @property
    def count(self) -> int:
        """Rows committed, asked again each time (a build in another process may have added some since)."""
        if not (self.folder / DB).exists():
            return 0
        count = self.db.execute(COUNT).fetchone()[0]
        if count != self._count:
            self._count, self._vectors, self._float32 = count, None, None
        return count

    @property
    def vectors(self) -> np.ndarray:
        count = self.count
        if self._vectors is None:
            dim = int(self.meta()["dim"])
            self._vectors = (np.memmap(self.folder / VECTORS, dtype=np.float16, mode="r", shape=(count, dim))
                             if count else np.zeros((0, dim), dtype=np.float16))
        return self._vectors

    @contextlib.contextmanager
    def writing(self, meta: dict | None = None) -> Iterator[AddPassages]:
        """Add passages (with their vectors) under the build lock; they appear together when the block ends. ``meta``
        makes a new KB (written last: until then readers find none)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "a") as lock:  # closing it releases the lock
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy(f"'{self.folder}'") from None
            new = not self.exists()
            if new:
                if meta is None:
                    raise not_a_kb(f"'{self.folder}'")
                for name in (DB, VECTORS, DB + "-journal"):  # what a build killed before its end left behind
                    (self.folder / name).unlink(missing_ok=True)
                self.close()
            db = _connect(self.folder / DB)
            db.executescript(SCHEMA)
            start = db.execute(COUNT).fetchone()[0]
            width = int((meta or self.meta())["dim"]) * 2
            path = self.folder / VECTORS
            with open(path, "ab") as fh:  # vectors no passage owns (a build that died) are dropped
                fh.truncate(start * width)
            staged: list[tuple[int, str, str, str]] = []

            def add(passages: list[Passage], vectors: np.ndarray) -> None:
                with open(path, "ab") as fh:  # past the last committed row: no reader maps it yet
                    fh.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
                first = start + len(staged)
                staged.extend((first + i, p.id, p.title, p.text) for i, p in enumerate(passages))

            try:
                yield add
                with db:  # one transaction: every passage of the build, or (killed on the way) none
                    db.executemany("INSERT INTO passages (row, id, title, text) VALUES (?, ?, ?, ?)", staged)
                    db.executemany("INSERT INTO passages_fts (rowid, title, text) VALUES (?, ?, ?)",
                                   [(r, title, text) for r, _, title, text in staged])
            except BaseException:
                with open(path, "ab") as fh:
                    fh.truncate(start * width)
                raise
            finally:
                db.close()
            if new:
                tmp = self.folder / (META + ".tmp")
                tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
                os.replace(tmp, self.folder / META)  # last: now it is a KB
                self._meta = dict(meta)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[LocalStore]:
        """A copy of this KB in a temporary folder, to add to and throw away (evaluation)."""
        with tempfile.TemporaryDirectory(prefix="lmforge-kb-") as folder:
            copy = sqlite3.connect(Path(folder) / DB)
            with copy:
                self.db.backup(copy)
            copy.close()
            count, dim = self.count, int(self.meta()["dim"])
            with open(self.folder / VECTORS, "rb") as src, open(Path(folder) / VECTORS, "wb") as dst:
                dst.write(src.read(count * dim * 2))  # the committed rows only
            (Path(folder) / META).write_text(json.dumps(self.meta()), encoding="utf-8")
            store = LocalStore(Path(folder))
            try:
                yield store
            finally:
                store.close()

    def known(self, ids: list[str]) -> set[str]:
        if not (self.folder / DB).exists():
            return set()
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found |= {r[0] for r in self.db.execute(f"SELECT id FROM passages WHERE id IN ({marks})", chunk)}
        return found

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        words = query_words(query)
        if not words or not self.count:
            return []
        match = " OR ".join(f'"{w}"' for w in words)  # any word; BM25 ranks by how many and how rare
        found = self.db.execute("SELECT rowid, bm25(passages_fts) FROM passages_fts WHERE passages_fts MATCH ? "
                                "ORDER BY bm25(passages_fts), rowid LIMIT ?", (match, k)).fetchall()
        return [(int(row), -float(score)) for row, score in found]  # FTS5's bm25() is lower-is-better

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        count = self.count
        if not count:
            return []
        query = vector.astype(np.float32)
        if count * len(query) * 4 <= FLOAT32_CACHE_BYTES:  # small enough to keep in float32: one matmul a query
            if self._float32 is None:
                self._float32 = np.asarray(self.vectors, dtype=np.float32)
            scores = self._float32 @ query
        else:
            scores = np.empty(count, dtype=np.float32)
            for start in range(0, count, 65536):  # float32 a chunk at a time: the map itself stays float16
                scores[start : start + 65536] = self.vectors[start : start + 65536].astype(np.float32) @ query
        return list(top_k(scores, k))

    def vectors_of(self, rows: list[int]) -> np.ndarray:
        return self.vectors[rows].astype(np.float32)

    def fetch(self, rows: list[int]) -> list[Passage]:
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        found = {r[0]: Passage(r[1], r[2], r[3], r[0]) for r in
                 self.db.execute(f"SELECT row, id, title, text FROM passages WHERE row IN ({marks})", rows)}
        return [found[r] for r in rows if r in found]

    def size_bytes(self) -> int:
        return sum((self.folder / f).stat().st_size for f in (DB, VECTORS, META) if (self.folder / f).exists())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._count, self._vectors, self._float32 = -1, None, None


def leftovers_only(folder: Path) -> bool:
    """Whether a folder holds nothing but a KB's own files (a KB, or what a killed first build left)."""
    return all(p.name in OWN_FILES for p in folder.iterdir())


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, check_same_thread=False, timeout=60)  # a reader waits out a build's commit
