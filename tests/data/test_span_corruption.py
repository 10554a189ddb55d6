"""T5 span corruption: the noise rate, the number and order of spans and sentinels, and that nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.data.span_corruption import corrupt, noise_mask, sentinel_tokens

SENTINEL_IDS = list(range(1000, 1100))
EOS = 1


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("length", [10, 64, 512])
def test_the_noise_is_15_percent_in_spans_averaging_3_tokens(length):
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = noise_mask(length, rng)
        spans = _spans(mask)
        assert mask.sum() == round(0.15 * length)
        assert len(spans) == max(1, round(mask.sum() / 3))
        assert not mask[0]  # it starts with kept tokens, as T5's does
    long = np.concatenate([[e - s for s, e in _spans(noise_mask(512, rng))] for _ in range(200)])
    assert long.mean() == pytest.approx(3.0, abs=0.1)


def test_masks_vary_with_the_rng_and_repeat_with_the_seed():
    a = [noise_mask(100, np.random.default_rng(7)) for _ in range(2)]
    b = noise_mask(100, np.random.default_rng(8))
    assert np.array_equal(*a) and not np.array_equal(a[0], b)


def test_sentinels_are_in_order_and_input_plus_target_give_back_the_sequence():
    ids = list(range(10, 74))
    mask = noise_mask(len(ids), np.random.default_rng(3))
    inputs, targets = corrupt(ids, mask, SENTINEL_IDS, EOS)
    spans = _spans(mask)
    used_in = [t for t in inputs if t in SENTINEL_IDS]
    used_out = [t for t in targets if t in SENTINEL_IDS]
    assert used_in == used_out == SENTINEL_IDS[: len(spans)]
    assert inputs[-1] == targets[-1] == EOS
    # put each span back in place of its sentinel: the original sequence
    parts, current = {}, None
    for t in targets[:-1]:
        if t in SENTINEL_IDS:
            current = t
            parts[current] = []
        else:
            parts[current].append(t)
    rebuilt = [x for t in inputs[:-1] for x in (parts[t] if t in SENTINEL_IDS else [t])]
    assert rebuilt == ids
    assert len(inputs) - 1 == len(ids) - mask.sum() + len(spans)


def test_the_worked_example():
    ids = list("abcdefghij")
    mask = np.array([c in "cdhi" for c in ids])
    inputs, targets = corrupt(range(len(ids)), mask, ["<0>", "<1>"], "</s>")
    assert [ids[t] if isinstance(t, int) else t for t in inputs] == ["a", "b", "<0>", "e", "f", "g", "<1>", "j", "</s>"]
    assert [ids[t] if isinstance(t, int) else t for t in targets] == ["<0>", "c", "d", "<1>", "h", "i", "</s>"]
    assert sentinel_tokens(2) == ["<extra_id_0>", "<extra_id_1>"]
