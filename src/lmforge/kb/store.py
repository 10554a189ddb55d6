"""Where a knowledge base's passages live, behind one small interface, :class:`PassageStore`:

- :class:`lmforge.kb.local.LocalStore` (the default, no server): one folder holding ``kb.sqlite`` (the passages and
  an FTS5 full-text index ranked by BM25), ``vectors.f16`` (their sentence vectors, float16, read through a memory
  map) and ``kb.json`` (the embedding model and its settings);
- :class:`lmforge.kb.postgres.PostgresStore` (``--store postgresql://user@host/db``): passages, PostgreSQL's own
  full-text index (tsvector) and the vectors in one database that any number of ``lmforge serve`` replicas share;
  the vectors in a pgvector HNSW index where the extension exists, else a ``real[]`` column searched exactly.

Writes go through :meth:`PassageStore.writing`: one writer at a time (a second fails at once, naming the KB), and
what it adds becomes visible all at once when it finishes; a build that dies half-way (kill -9 included) leaves the
KB as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lmforge.errors import LmforgeError

WORD = re.compile(r"\w+", re.UNICODE)
STORE_SCHEMES = ("postgresql://", "postgres://")


@dataclass
class Passage:
    id: str
    title: str
    text: str
    row: int = -1  # position in the store (and in the vectors)


AddPassages = Callable[[list[Passage], np.ndarray], None]


class PassageStore(Protocol):
    """What a knowledge base needs of the place its passages live. Rows are numbered 0.. in the order added."""

    where: str  # how a user names it (a folder, or the KB's name in a database)

    @property
    def count(self) -> int: ...
    def exists(self) -> bool: ...
    def meta(self) -> dict: ...
    def writing(self, meta: dict | None = None) -> AbstractContextManager[AddPassages]: ...
    def scratch(self) -> AbstractContextManager[PassageStore]: ...
    def known(self, ids: list[str]) -> set[str]: ...
    def bm25(self, query: str, k: int) -> list[tuple[int, float]]: ...
    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]: ...
    def vectors_of(self, rows: list[int]) -> np.ndarray: ...
    def fetch(self, rows: list[int]) -> list[Passage]: ...
    def size_bytes(self) -> int: ...
    def close(self) -> None: ...


def query_words(query: str) -> list[str]:
    """The distinct words of a question, lowercased: what full-text search looks for, each as a plain word, so that
    quotes, ``*``, ``OR``, ``NEAR(`` or a lone ``-`` in a question are text, never query syntax."""
    return list(dict.fromkeys(WORD.findall(query.lower())))


def busy(where: str) -> LmforgeError:
    return LmforgeError(f"another build is writing to the knowledge base {where}", where=where,
                        fix="wait for it to finish (what it adds appears when it does), then build again")


def not_a_kb(where: str) -> LmforgeError:
    return LmforgeError(f"no knowledge base at {where}", where=where,
                        fix="build one with `lmforge kb build --docs python-docs-kb --out KB`, or check the name")


def top_k(scores: np.ndarray, k: int) -> Iterator[tuple[int, float]]:
    """The ``k`` best (row, score) of a score per row, best first (ties: the earlier row)."""
    count = len(scores)
    top = np.argpartition(-scores, min(k, count) - 1)[:k] if count > k else np.arange(count)
    top = top[np.lexsort((top, -scores[top]))]
    return ((int(i), float(scores[i])) for i in top)
