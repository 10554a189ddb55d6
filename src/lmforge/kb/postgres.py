"""A knowledge base in PostgreSQL (``--store postgresql://user@host/db``), shared by any number of stateless
``lmforge serve`` replicas: each KB is one table (``lmforge_kb_<name>``: row, id, title, text, a generated tsvector
with a GIN index, the vector) and a row of ``lmforge_kb`` (its name and settings).

Full text is PostgreSQL's own: ``to_tsvector('english', title || text)`` ranked by ``ts_rank`` over any of the
question's words. Vectors are float16-rounded like the local store's (so both stores rank alike): where the pgvector
extension exists (or can be created) they are a ``vector`` column with an HNSW index (inner product); elsewhere a
``real[]`` column searched exactly in SQL, every row a query (README: its measured cost).

A build holds an advisory lock (a second build fails at once) and adds everything in one transaction: readers see
all of it when it commits, none of it if the build dies (kill -9 drops the connection, PostgreSQL rolls back).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.kb.store import AddPassages, Passage, busy, not_a_kb, query_words

log = logging.getLogger("lmforge")

NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
REGISTRY = "lmforge_kb"


def redacted(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, *, autocommit: bool):
    try:
        import psycopg
    except ImportError:
        raise LmforgeError("a PostgreSQL store needs the psycopg driver", where="--store",
                           fix='pip install "lmforge[postgres]"  (or: pip install "psycopg[binary]")') from None
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmforgeError(f"cannot connect to PostgreSQL at {redacted(url)}: {reason}", where="--store",
                           fix="check the URL (postgresql://user@host:port/db), that the server runs and lets "
                               "this user in") from None


class PostgresStore:
    """One KB of a PostgreSQL database."""

    def __init__(self, url: str, name: str, conn=None) -> None:
        if not NAME.fullmatch(name):
            raise LmforgeError(f"'{name}' cannot name a knowledge base in a database", where="KB",
                               fix="with --store, KB is a name: letters, digits, '_' or '-', at most 40 (e.g. docs)")
        self.url, self.name = url, name
        self.table = f"lmforge_kb_{name.lower().replace('-', '_')}"
        self.where = f"'{name}' in {redacted(url)}"
        self._conn, self._own = conn, conn is None
        self._lock = threading.Lock()  # one statement at a time on the shared connection (the server's threads)
        self._meta: dict | None = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = connect(self.url, autocommit=True)
        return self._conn

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def exists(self) -> bool:
        if self._rows("SELECT to_regclass(%s)", (REGISTRY,))[0][0] is None:
            return False
        return bool(self._rows(f"SELECT 1 FROM {REGISTRY} WHERE name = %s", (self.name,)))

    def meta(self) -> dict:
        if self._meta is None:
            if not self.exists():
                raise not_a_kb(self.where)
            self._meta = self._rows(f"SELECT meta FROM {REGISTRY} WHERE name = %s", (self.name,))[0][0]
        return self._meta

    @property
    def pgvector(self) -> bool:
        return self.meta().get("vectors") == "pgvector"

    @property
    def count(self) -> int:
        if self._rows("SELECT to_regclass(%s)", (self.table,))[0][0] is None:
            return 0
        return int(self._rows(f"SELECT COALESCE(MAX(row) + 1, 0) FROM {self.table}")[0][0])

    @contextlib.contextmanager
    def writing(self, meta: dict | None = None) -> Iterator[AddPassages]:
        conn = connect(self.url, autocommit=False)
        try:
            key = f"lmforge-kb:{self.name}"
            if not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]:
                raise busy(self.where)
            view = PostgresStore(self.url, self.name, conn)
            new = not view.exists()
            if new and meta is None:
                raise not_a_kb(self.where)
            if new:
                meta = {**meta, "vectors": _create(conn, self.table, int(meta["dim"]))}
            add = view._adder(conn, meta or view.meta())
            yield add
            if new:
                conn.execute(f"CREATE INDEX ON {self.table} USING gin (tsv)")
                if meta["vectors"] == "pgvector":
                    conn.execute(f"CREATE INDEX ON {self.table} USING hnsw (vec vector_ip_ops)")
                conn.execute(f"INSERT INTO {REGISTRY} (name, meta) VALUES (%s, %s)", (self.name, json.dumps(meta)))
            conn.commit()  # all of it at once
            self._meta = None
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()  # and with it the advisory lock

    def _adder(self, conn, meta: dict) -> AddPassages:
        start = self.count
        added = 0
        cast = "vector" if meta.get("vectors") == "pgvector" else "real[]"

        def add(passages: list[Passage], vectors: np.ndarray) -> None:
            nonlocal added
            rounded = np.asarray(vectors, dtype=np.float16).astype(np.float32)  # as the local store keeps them
            rows = [(start + added + i, p.id, p.title, p.text, _literal(v) if cast == "vector" else v.tolist())
                    for i, (p, v) in enumerate(zip(passages, rounded))]
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.table} (row, id, title, text, vec) VALUES "
                                f"(%s, %s, %s, %s, %s::{cast})", rows)
            added += len(rows)

        return add

    @contextlib.contextmanager
    def scratch(self) -> Iterator[PostgresStore]:
        """This KB inside a transaction that is rolled back: add to it, search it, and nobody else sees a thing."""
        conn = connect(self.url, autocommit=False)
        view = _Scratch(self.url, self.name, conn)
        try:
            view.meta()
            yield view
        finally:
            conn.rollback()
            conn.close()

    def known(self, ids: list[str]) -> set[str]:
        if not ids or not self.count:
            return set()
        return {r[0] for r in self._rows(f"SELECT id FROM {self.table} WHERE id = ANY(%s)", (ids,))}

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        words = query_words(query)
        if not words:
            return []
        tsquery = " | ".join(f"'{w}'" for w in words)  # each a quoted lexeme: \w+ holds no quote or operator
        found = self._rows(f"SELECT row, ts_rank(tsv, q) AS s FROM {self.table}, to_tsquery('english', %s) q "
                           "WHERE tsv @@ q ORDER BY s DESC, row LIMIT %s", (tsquery, k))
        return [(int(r), float(s)) for r, s in found]

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        query = np.asarray(vector, dtype=np.float32)
        if self.pgvector:
            found = self._rows(f"SELECT row, -(vec <#> %s::vector) FROM {self.table} ORDER BY vec <#> %s::vector, "
                               "row LIMIT %s", (_literal(query), _literal(query), k))
        else:  # exact, in SQL: every row's inner product with the question
            found = self._rows(f"SELECT row, (SELECT sum(a::float8 * b) FROM unnest(vec, %s::real[]) AS t(a, b)) AS s "
                               f"FROM {self.table} ORDER BY s DESC, row LIMIT %s", (query.tolist(), k))
        return [(int(r), float(s)) for r, s in found]

    def vectors_of(self, rows: list[int]) -> np.ndarray:
        if not rows:
            return np.zeros((0, int(self.meta()["dim"])), dtype=np.float32)
        found = dict(self._rows(f"SELECT row, vec::real[] FROM {self.table} WHERE row = ANY(%s)", (rows,)))
        return np.asarray([found[r] for r in rows], dtype=np.float32)

    def fetch(self, rows: list[int]) -> list[Passage]:
        if not rows:
            return []
        found = {r[0]: Passage(r[1], r[2], r[3], r[0]) for r in
                 self._rows(f"SELECT row, id, title, text FROM {self.table} WHERE row = ANY(%s)", (rows,))}
        return [found[r] for r in rows if r in found]

    def size_bytes(self) -> int:
        return int(self._rows("SELECT pg_total_relation_size(%s)", (self.table,))[0][0] or 0)

    def close(self) -> None:
        if self._own and self._conn is not None:  # a view on a build's connection leaves it to the build
            self._conn.close()
            self._conn = None


class _Scratch(PostgresStore):
    """A KB seen through an open transaction: what it adds is seen by its own searches and rolled back after."""

    @contextlib.contextmanager
    def writing(self, meta: dict | None = None) -> Iterator[AddPassages]:
        yield self._adder(self.conn, self.meta())


def _create(conn, table: str, dim: int) -> str:
    """The KB's table (in the build's transaction); returns how its vectors are kept: pgvector or real[]."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {REGISTRY} (name text PRIMARY KEY, meta jsonb NOT NULL, "
                 "created timestamptz NOT NULL DEFAULT now())")
    kind = "real[]"
    try:
        with conn.transaction():  # a savepoint: without the extension (or the right to create it) go on
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        kind = "pgvector"
    except Exception as exc:  # noqa: BLE001 - any refusal means the same: no pgvector here
        log.info("no pgvector (%s): vectors kept as real[] and searched exactly", str(exc).splitlines()[0])
    column = f"vector({dim})" if kind == "pgvector" else "real[]"
    conn.execute(f"DROP TABLE IF EXISTS {table}")  # a table no KB row names (dropped by hand from the registry)
    conn.execute(f"CREATE TABLE {table} (row bigint PRIMARY KEY, id text UNIQUE NOT NULL, title text NOT NULL, "
                 f"text text NOT NULL, vec {column} NOT NULL, tsv tsvector GENERATED ALWAYS AS "
                 "(setweight(to_tsvector('english', title), 'B') || to_tsvector('english', text)) STORED)")
    return kind


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"
