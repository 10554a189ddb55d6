"""Which store holds a knowledge base: a folder (:mod:`lmforge.kb.local`) or, with a ``postgresql://`` URL, a
database (:mod:`lmforge.kb.postgres`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.kb.store import STORE_SCHEMES, PassageStore


def is_store_url(store: str | None) -> bool:
    return bool(store) and str(store).startswith(STORE_SCHEMES)


def open_store(kb: str | Path, store: str | None = None) -> PassageStore:
    """The store of knowledge base ``kb``: a folder (the default), or with ``store`` (a ``postgresql://`` URL) the KB
    of that name in the database."""
    if store:
        if not is_store_url(store):
            raise LmforgeError(f"unknown store '{store}'", where="--store",
                               fix="give a PostgreSQL URL (postgresql://user@host/db), or leave --store out for a "
                                   "KB folder")
        from lmforge.kb.postgres import PostgresStore

        return PostgresStore(store, str(kb))
    from lmforge.kb.local import LocalStore

    return LocalStore(Path(kb))


def is_kb(kb: str | Path, store: str | None = None) -> bool:
    """Whether ``kb`` names a finished knowledge base (a local folder: its files, no connection; a store: asks it)."""
    with contextlib.closing(open_store(kb, store)) as found:
        return found.exists()


def read_meta(kb: str | Path, store: str | None = None) -> dict:
    """A knowledge base's settings (its embedding model, vector size, ...); a clear error where there is none."""
    with contextlib.closing(open_store(kb, store)) as found:
        return found.meta()
