"""T5's span-corruption objective (Raffel et al. 2020, section 3.1.4): a share of a sequence's tokens (the noise
density, 15 %) is dropped in spans of random length averaging ``mean_span`` (3) tokens; the input keeps the rest with
one sentinel token in place of each span, the target lists each sentinel followed by the tokens it replaced.

    tokens   a b c d e f g h i j
    input    a b <extra_id_0> e f g <extra_id_1> j </s>
    target   <extra_id_0> c d <extra_id_1> h i </s>

Sentinels are numbered in order of appearance (``<extra_id_0>`` first), as T5's vocabulary names them; a tokenizer
gets them with :func:`sentinel_tokens`.
"""

from __future__ import annotations

import numpy as np

SENTINELS = 100  # like T5: <extra_id_0> ... <extra_id_99>


def sentinel_tokens(count: int = SENTINELS) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(count)]


def noise_counts(length: int, density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """How many of ``length`` tokens are dropped, and in how many spans (see :func:`noise_mask`)."""
    noise = int(min(max(round(length * density), 1), length - 1))
    return noise, int(min(max(round(noise / mean_span), 1), noise, length - noise))


def noise_mask(length: int, rng: np.random.Generator, density: float = 0.15, mean_span: float = 3.0) -> np.ndarray:
    """Which of ``length`` tokens are dropped: ``round(length * density)`` of them (at least 1, at most length - 1),
    in ``round(noise / mean_span)`` spans (at least 1), noise and kept spans alternating, the sequence starting with
    kept tokens. The span lengths are a random partition of each total, as in T5's ``random_spans_noise_mask``."""
    if length < 2:
        return np.zeros(length, dtype=bool)
    noise, spans = noise_counts(length, density, mean_span)

    def partition(total: int) -> np.ndarray:  # ``spans`` positive parts summing to ``total``
        cuts = np.sort(rng.choice(np.arange(1, total), size=spans - 1, replace=False)) if spans > 1 else []
        return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)

    noise_lengths, kept_lengths = partition(noise), partition(length - noise)
    mask = np.zeros(length, dtype=bool)
    position = 0
    for kept, dropped in zip(kept_lengths, noise_lengths):
        position += kept
        mask[position : position + dropped] = True
        position += dropped
    return mask


def corrupt(ids: list[int] | np.ndarray, mask: np.ndarray, sentinel_ids: list[int], eos_id: int | None
            ) -> tuple[list[int], list[int]]:
    """The (input, target) pair for ``ids`` with the tokens under ``mask`` dropped in spans (see the module doc)."""
    ids = np.asarray(ids)
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (token, dropped) in enumerate(zip(ids.tolist(), mask.tolist())):
        if dropped:
            if i == 0 or not mask[i - 1]:  # a new span: its sentinel goes in the input and heads its target part
                span += 1
                if span >= len(sentinel_ids):
                    raise ValueError(f"more noise spans than the {len(sentinel_ids)} sentinel tokens")
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(token)
        else:
            inputs.append(token)
    if eos_id is not None:
        inputs.append(eos_id)
        targets.append(eos_id)
    return inputs, targets
