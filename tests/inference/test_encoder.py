"""The lean BERT classifier forward: the same logits as transformers' BertForSequenceClassification, and a
classification pipeline that never imports transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY_BERT

TEXTS = ["a gorgeous, moving film", "dull", "It is a truth universally acknowledged, that a single man in possession of "
         "a good fortune, must be in want of a wife. " * 2]  # long enough to truncate at 16, within 128 positions


@pytest.fixture(scope="module")
def classifier_dir(wordpiece_dir, tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    config = BertConfig(vocab_size=len(tok), max_position_embeddings=128, num_labels=3,
                        id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}, **TINY_BERT)
    model = BertForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("models") / "tiny-classifier"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_lean_forward_equals_transformers_on_padded_and_truncated_batches(classifier_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from lmforge.data.batching import pad_batch
    from lmforge.inference.encoder import FastTokenizer, LeanBertClassifier, supports

    assert supports(classifier_dir)
    hf_tok = AutoTokenizer.from_pretrained(classifier_dir)
    hf = BertForSequenceClassification.from_pretrained(classifier_dir).eval()
    ours_tok, ours = FastTokenizer(classifier_dir), LeanBertClassifier(classifier_dir, torch.device("cpu"))
    for max_length in (16, None):
        ids = ours_tok.encode(TEXTS, max_length)
        expected = hf_tok(TEXTS, truncation=max_length is not None, max_length=max_length)["input_ids"]
        assert ids == expected
        ids_t, mask = pad_batch(ids, ours_tok.pad_token_id)
        with torch.no_grad():
            reference = hf(input_ids=ids_t, attention_mask=mask).logits
        torch.testing.assert_close(ours.logits(ids_t, mask), reference, rtol=1e-5, atol=1e-5)
    assert ours.labels == ["a", "b", "c"] and ours_tok.pad_token_id == hf_tok.pad_token_id


def test_other_architectures_are_not_taken_by_the_lean_path(tiny_bert_dir, classifier_dir, tmp_path):
    from lmforge.inference.encoder import supports

    assert not supports(tiny_bert_dir)  # a BertForPreTraining: not a classifier
    config = json.loads((classifier_dir / "config.json").read_text())
    other = tmp_path / "relative"
    other.mkdir()
    for f in classifier_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    assert not supports(other)


def test_classifying_never_imports_transformers(classifier_dir):
    probe = (f"import sys; from lmforge.inference.pipelines import ClassificationPipeline; "
             f"p = ClassificationPipeline({str(classifier_dir)!r}); print(p.predict(['fine'])[0]['label']); "
             f"print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] in ("a", "b", "c") and out[1] == "False"
