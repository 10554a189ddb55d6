"""Inputs longer than a classifier's window: which tokens it reads, and how the windows' answers become one.

A text is tokenized once without special tokens (its *content*) and cut into *pieces* that each fit the model with its
special tokens around them (``[CLS] ... [SEP]`` for BERT):

- ``truncate``: the first ``max_length`` tokens (what every classifier did before; Hugging Face's truncation);
- ``head-tail``: the start and the end of the text, one piece (Sun et al. 2019, "How to fine-tune BERT for text
  classification": the head and the tail of a long review carry most of its label);
- ``windows``: overlapping windows over the whole text (``stride`` tokens shared by neighbours, the last one aligned to
  the end), at most ``max_windows`` of them: past that they are spread evenly from the start to the end.

A text that fits in one window gives the same single piece under every strategy, so short texts cost nothing. The
windows' logits are pooled per text (mean or max) into one answer; training can pool the same way inside the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Strategy = Literal["truncate", "head-tail", "windows"]
STRATEGIES: tuple[str, ...] = ("truncate", "head-tail", "windows")


@dataclass(frozen=True)
class Framing:
    """The special tokens a tokenizer puts around one sequence: ``prefix + content + suffix``."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, with_specials: Callable[[str], list[int]], content: Callable[[str], list[int]]) -> Framing:
        """Found by asking the tokenizer: an empty text gives ``prefix + suffix``, a word shows where they split."""
        around, word = list(with_specials("")), list(content("a"))
        full = list(with_specials("a"))
        for split in range(len(around) + 1):
            if full == around[:split] + word + around[split:]:
                return cls(tuple(around[:split]), tuple(around[split:]))
        raise ValueError("the tokenizer adds special tokens that depend on the text; long-input strategies cannot frame it")

    def wrap(self, content: Sequence[int]) -> list[int]:
        return [*self.prefix, *content, *self.suffix]

    def budget(self, max_length: int) -> int:
        """Content tokens one piece can hold."""
        return max_length - len(self.prefix) - len(self.suffix)


@dataclass(frozen=True)
class Reading:
    """How a classifier reads a text: the strategy and its settings (``LongInputSettings`` in a run's config)."""

    strategy: str = "truncate"
    max_length: int = 128
    stride: int | None = None  # content tokens neighbouring windows share; None: a quarter of a window
    max_windows: int = 16
    head_fraction: float = 0.25  # head-tail: share of the window given to the head
    pool: str = "mean"  # windows: how their logits become one answer

    @classmethod
    def from_config(cls, config: dict, max_length: int | None = None) -> Reading:
        """From a classify run's config (lmforge.yaml); truncation at 128 tokens when it says nothing."""
        settings = config.get("long_inputs") or {}
        return cls(strategy=settings.get("strategy", cls.strategy),
                   max_length=int(max_length or config.get("max_length") or cls.max_length),
                   stride=settings.get("stride"), max_windows=int(settings.get("max_windows", cls.max_windows)),
                   head_fraction=float(settings.get("head_fraction", cls.head_fraction)),
                   pool=settings.get("pool", cls.pool))

    def overlap(self, budget: int) -> int:
        return min(budget - 1, max(0, budget // 4 if self.stride is None else self.stride))

    def window_starts(self, n: int, budget: int, *, cap: bool = True) -> list[int]:
        """Where each window of ``budget`` content tokens starts over ``n`` tokens (the last ends at ``n``)."""
        if n <= budget:
            return [0]
        step = budget - self.overlap(budget)
        starts = list(range(0, n - budget, step)) + [n - budget]
        if cap and len(starts) > self.max_windows:
            starts = np.linspace(0, n - budget, self.max_windows).round().astype(int).tolist() if self.max_windows > 1 \
                else [0]
        return starts

    def windows_needed(self, n: int, framing: Framing) -> int:
        """How many pieces a text of ``n`` content tokens is read as (before any cap)."""
        if self.strategy != "windows":
            return 1
        return len(self.window_starts(n, framing.budget(self.max_length), cap=False))

    def pieces(self, content: Sequence[int], framing: Framing) -> list[list[int]]:
        """The token sequences (special tokens included) the model reads for one text."""
        budget = framing.budget(self.max_length)
        n = len(content)
        if n <= budget or self.strategy == "truncate":
            return [framing.wrap(content[:budget])]
        if self.strategy == "head-tail":
            head = round(budget * self.head_fraction)
            return [framing.wrap([*content[:head], *content[n - (budget - head):]])]
        return [framing.wrap(content[s : s + budget]) for s in self.window_starts(n, budget)]


def flatten(pieces: list[list[list[int]]]) -> tuple[list[list[int]], np.ndarray]:
    """All texts' pieces in one list, and for each piece the index of its text."""
    flat = [p for text in pieces for p in text]
    owner = np.repeat(np.arange(len(pieces)), [len(text) for text in pieces])
    return flat, owner


def pool(logits, owner, count: int, how: str = "mean"):
    """Per text, the mean or the element-wise max of its pieces' logits: ``[pieces, C] -> [count, C]``.

    Works on torch tensors (differentiable, for training) and numpy arrays alike."""
    import torch

    is_numpy = isinstance(logits, np.ndarray)
    values = torch.from_numpy(logits) if is_numpy else logits
    index = torch.as_tensor(owner, dtype=torch.long, device=values.device)
    expanded = index[:, None].expand_as(values)
    if how == "max":
        out = values.new_full((count, values.shape[1]), float("-inf")).scatter_reduce(0, expanded, values, "amax")
    elif how == "mean":
        out = values.new_zeros((count, values.shape[1])).scatter_reduce(0, expanded, values, "mean",
                                                                         include_self=False)
    else:
        raise ValueError(f"unknown pooling {how!r}: mean or max")
    return out.numpy() if is_numpy else out
