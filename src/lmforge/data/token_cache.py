"""Tokenize a corpus once into memory-mapped arrays, keyed by a fingerprint of (tokenizer, files, settings).

Layout of a cache folder (``$LMFORGE_CACHE`` or ``~/.cache/lmforge``, then ``tokens/<fingerprint>/``):
``tokens.bin`` (uint16 when the vocabulary fits, else uint32), ``line_starts.npy`` (token offset of each line, plus
the total), ``doc_lines.npy`` (line index of each document start, plus the line count), ``meta.json``. Later runs
with the same tokenizer and files map the arrays instead of tokenizing again; no tokenization happens in the loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.progress import text_bytes, track
from lmforge.data.readers import iter_documents
from lmforge.models import cache_root
from lmforge.rundir import file_fingerprint

log = logging.getLogger("lmforge")
CACHE_VERSION = 2  # 2: every line ends with "\n" (a token for byte-level BPE, nothing for WordPiece)
CHUNK_LINES = 8192



@dataclass
class TokenCache:
    folder: Path
    tokens: np.ndarray  # [N] token ids of every line, concatenated (memmap)
    line_starts: np.ndarray  # [lines + 1]
    doc_lines: np.ndarray  # [docs + 1]
    vocab_size: int

    @property
    def n_docs(self) -> int:
        return len(self.doc_lines) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.line_starts[-1])

    @property
    def doc_starts(self) -> np.ndarray:
        """Token offset of each document start, plus the total: [docs + 1]."""
        return self.line_starts[self.doc_lines]


def fingerprint(backend_tokenizer, files: list[Path], settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode())
    digest.update(backend_tokenizer.to_str().encode())
    for f in files:
        digest.update(file_fingerprint(f)["sha256"].encode())
    return digest.hexdigest()[:24]


def _load(folder: Path) -> TokenCache:
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    return TokenCache(folder, tokens, np.load(folder / "line_starts.npy"), np.load(folder / "doc_lines.npy"),
                      meta["vocab_size"])


def token_cache(tokenizer, files: list[Path], settings: dict | None = None) -> TokenCache:
    """Map the cached token arrays for these files, building them first if needed (atomically; under a distributed
    launch the main process builds while the others wait)."""
    from lmforge import dist

    with dist.main_first():
        return _token_cache(tokenizer, files, settings)


def _token_cache(tokenizer, files: list[Path], settings: dict | None = None) -> TokenCache:
    backend = tokenizer.backend_tokenizer
    key = fingerprint(backend, files, settings or {})
    folder = cache_root() / "tokens" / key
    if (folder / "meta.json").exists():
        log.info("using cached tokens %s", folder)
        return _load(folder)
    vocab = len(tokenizer)
    dtype = "uint16" if vocab <= np.iinfo(np.uint16).max else "uint32"
    tmp = folder.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    line_lengths: list[int] = []
    doc_lines = [0]
    pending: list[str] = []
    n_tokens = 0
    with open(tmp / "tokens.bin", "wb") as out:

        def flush() -> None:
            nonlocal n_tokens
            if not pending:
                return
            # the line break is part of the text a causal LM must learn to write; WordPiece drops it as whitespace
            encodings = backend.encode_batch([line + "\n" for line in pending], add_special_tokens=False)
            ids = [e.ids for e in encodings]
            line_lengths.extend(len(x) for x in ids)
            flat = np.concatenate([np.asarray(x, dtype=dtype) for x in ids]) if ids else np.zeros(0, dtype)
            out.write(flat.tobytes())
            n_tokens += len(flat)
            pending.clear()

        docs = track(iter_documents(files), text_bytes(files), "tokenizing the corpus (once; cached)",
                     size=lambda doc: sum(len(line) + 1 for line in doc))
        for doc in docs:
            pending.extend(doc)
            doc_lines.append(doc_lines[-1] + len(doc))
            if len(pending) >= CHUNK_LINES:
                flush()
        flush()
    line_starts = np.zeros(len(line_lengths) + 1, dtype=np.int64)
    np.cumsum(line_lengths, out=line_starts[1:])
    np.save(tmp / "line_starts.npy", line_starts)
    np.save(tmp / "doc_lines.npy", np.asarray(doc_lines, dtype=np.int64))
    meta = {"dtype": dtype, "n_tokens": n_tokens, "vocab_size": vocab, "files": [str(f) for f in files],
            "settings": settings or {}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tokenized %d documents, %d tokens into %s", len(doc_lines) - 1, n_tokens, folder)
    return _load(folder)


def split_documents(cache: TokenCache, fraction: float, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole documents (about ``fraction`` of the tokens) for evaluation: (train doc ids, eval doc ids)."""
    n = cache.n_docs
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    sizes = np.diff(cache.doc_starts)
    order = np.random.default_rng(seed).permutation(n)
    cumulative = np.cumsum(sizes[order])
    take = int(np.searchsorted(cumulative, fraction * cache.n_tokens)) + 1
    take = min(max(1, take), n - 1)
    return np.sort(order[take:]), np.sort(order[:take])
