"""How long texts are cut into pieces, and how the pieces' logits become one answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lmforge.data.long_inputs import Framing, Reading, flatten, pool

BERT = Framing(prefix=(101,), suffix=(102,))


def test_windows_cover_every_token_overlap_and_end_at_the_end():
    reading = Reading(strategy="windows", max_length=12, stride=3)  # 10 content tokens a window, 3 shared
    content = list(range(40))
    pieces = reading.pieces(content, BERT)
    assert all(p[0] == 101 and p[-1] == 102 and len(p) == 12 for p in pieces)
    inner = [p[1:-1] for p in pieces]
    assert [w[0] for w in inner] == [0, 7, 14, 21, 28, 30]  # a step of 10 - 3; the last one ends at the text's end
    assert inner[-1][-1] == 39 and sorted({t for w in inner for t in w}) == content
    assert all(a[-3:] == b[:3] for a, b in itertools.pairwise(inner[:-1]))  # the last overlaps more
    assert reading.windows_needed(40, BERT) == len(pieces) == 6


def test_past_the_cap_windows_are_spread_from_start_to_end():
    reading = Reading(strategy="windows", max_length=12, stride=0, max_windows=4)
    inner = [p[1:-1] for p in reading.pieces(list(range(100)), BERT)]
    assert len(inner) == 4 and reading.windows_needed(100, BERT) == 10
    assert inner[0][0] == 0 and inner[-1][-1] == 99  # the start and the end are always read
    assert [w[0] for w in inner] == [0, 30, 60, 90]


def test_head_tail_keeps_the_start_and_the_end():
    reading = Reading(strategy="head-tail", max_length=10, head_fraction=0.25)  # 8 content tokens: 2 head, 6 tail
    [piece] = reading.pieces(list(range(50)), BERT)
    assert piece == [101, 0, 1, 44, 45, 46, 47, 48, 49, 102]


def test_truncate_equals_the_tokenizers_own_truncation(wordpiece_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    framing = Framing.of(lambda t: tok(t)["input_ids"], lambda t: tok(t, add_special_tokens=False)["input_ids"])
    assert framing == Framing((tok.cls_token_id,), (tok.sep_token_id,))
    text = "the quick brown fox jumps over the lazy dog " * 10
    content = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert Reading(max_length=16).pieces(content, framing) == [tok(text, truncation=True, max_length=16)["input_ids"]]


@pytest.mark.parametrize("strategy", ["truncate", "head-tail", "windows"])
def test_a_text_that_fits_is_one_identical_piece_under_every_strategy(strategy):
    content = list(range(10))
    assert Reading(strategy=strategy, max_length=12).pieces(content, BERT) == [[101, *content, 102]]


def test_pooling_is_the_mean_or_the_max_of_each_texts_pieces():
    pieces = [[[1]], [[2], [3], [4]], [[5], [6]]]
    flat, owner = flatten(pieces)
    assert flat == [[1], [2], [3], [4], [5], [6]] and owner.tolist() == [0, 1, 1, 1, 2, 2]
    logits = np.array([[1, -1], [0, 3], [2, 0], [4, -5], [-1, -1], [1, 1]], dtype=np.float32)
    np.testing.assert_allclose(pool(logits, owner, 3, "mean"), [[1, -1], [2, -2 / 3], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(pool(logits, owner, 3, "max"), [[1, -1], [4, 3], [1, 1]])
    as_torch = pool(torch.from_numpy(logits), torch.from_numpy(owner), 3, "mean")  # the training path
    np.testing.assert_allclose(as_torch.numpy(), pool(logits, owner, 3, "mean"))
