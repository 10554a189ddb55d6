"""The embed task: a plain encoder folder (the embedded minilm) loads as a sentence-embedding pipeline whose vectors
are the knowledge bases' own; lmforge neither trains nor scores it, and says what to do instead."""

from __future__ import annotations

import json

import numpy as np

import lmforge
from lmforge.kb.embed import SentenceEmbedder
from lmforge.stages import resolve_task


def test_minilm_loads_as_a_sentence_encoder_with_the_kbs_vectors(cli):
    task, _, _ = resolve_task("minilm")  # a BertModel folder: no task head
    assert task.name == "embed" and task.routes == ("embeddings",)
    pipeline = lmforge.load("minilm")
    texts = ["A gorgeous, moving film.", "How do I open a file in Python?"]
    results = pipeline.predict(texts)
    vectors = np.array([r["embedding"] for r in results], dtype=np.float32)
    np.testing.assert_allclose(vectors, SentenceEmbedder("minilm").embed(texts), atol=1e-6)
    assert pipeline.describe()["dimensions"] == 384 and pipeline.max_length == 256
    assert [r["tokens"] for r in results] == [len(ids) for ids in pipeline.tokenize(texts)]
    printed = cli("predict", "minilm", texts[0])
    assert printed.code == 0 and len(json.loads(printed.out)["embedding"]) == 384


def test_a_sentence_encoder_is_not_trained_or_scored_here(cli):
    result = cli("evaluate", "minilm")
    assert result.code == 2 and "sentence encoder" in result.err and "lmforge kb build" in result.err
