"""BERT pretraining data and objective: packing, NSP pairs, BERT masking, the masked-positions head, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

from lmforge.data.token_cache import split_documents, token_cache
from lmforge.tasks.pretrain_mlm_nsp import MlmNspBatches, make_instances
from lmforge.training.objectives import MaskedPositionsPretraining
from tests.helpers import losses, pretrain_args


@pytest.fixture(scope="module")
def cache(tiny_corpus, wordpiece_dir):
    return token_cache(AutoTokenizer.from_pretrained(wordpiece_dir), [tiny_corpus])


def test_token_cache_is_built_once_and_keyed_by_content(cache, tiny_corpus, wordpiece_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    again = token_cache(tok, [tiny_corpus])
    assert again.folder == cache.folder
    assert cache.tokens.dtype == np.uint16 and isinstance(cache.tokens, np.memmap)
    first_line = tiny_corpus.read_text().splitlines()[0]
    assert list(cache.tokens[: cache.line_starts[1]]) == tok(first_line, add_special_tokens=False)["input_ids"]
    other = tmp_path / "other.txt"
    other.write_text(tiny_corpus.read_text() + "\nOne more line.\n")
    assert token_cache(tok, [other]).folder != cache.folder


def test_pairs_are_packed_and_balanced(cache):
    docs = np.arange(cache.n_docs)
    inst = make_instances(cache, docs, seq_len=64, rng=np.random.default_rng(0))
    assert (inst.lengths <= 64).all() and (inst.a_len >= 1).all() and (inst.b_len >= 1).all()
    lengths = inst.lengths
    assert lengths[lengths == 64].sum() / lengths.sum() > 0.5  # long documents fill whole sequences
    from lmforge.data.batching import length_grouped_batches

    batches = length_grouped_batches(lengths, 16, np.random.default_rng(0))
    computed = sum(int(lengths[b].max()) * len(b) for b in batches)
    assert computed / lengths.sum() < 1.05  # short document tails are grouped: almost no padding is computed
    assert 0.4 < inst.nsp_label.mean() < 0.6
    true_next = inst.nsp_label == 0
    assert (inst.b_start[true_next] == inst.a_start[true_next] + inst.a_len[true_next]).all()
    doc_of = lambda pos: np.searchsorted(cache.doc_starts, pos, side="right") - 1
    rand = inst.nsp_label == 1
    assert (doc_of(inst.b_start[rand]) != doc_of(inst.a_start[rand])).all()


def test_masking_follows_bert(cache, wordpiece_dir):
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    source = MlmNspBatches(cache, np.arange(cache.n_docs), tok, seq_len=64, batch_size=64, mask_prob=0.15, seed=0,
                           vocab_size=len(tok))
    counts = {"mask": 0, "same": 0, "other": 0}
    for index in range(5):
        batch = source.batch(0, index)
        labels, positions, ids = batch["masked_labels"], batch["masked_positions"], batch["input_ids"]
        valid = labels != -100
        real = (batch.get("attention_mask", torch.ones_like(ids)).sum(1) - 3).float()
        assert torch.equal(valid.sum(1), torch.clamp(torch.round(real * 0.15).long(), min=1))
        assert not torch.isin(labels[valid], torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])).any()
        now = ids.gather(1, positions)[valid]
        counts["mask"] += int((now == tok.mask_token_id).sum())
        counts["same"] += int((now == labels[valid]).sum())
        counts["other"] += int(((now != tok.mask_token_id) & (now != labels[valid])).sum())
        assert torch.equal(source.batch(0, index)["input_ids"], ids)  # deterministic
    total = sum(counts.values())
    assert 0.75 < counts["mask"] / total < 0.85
    assert 0.06 < counts["same"] / total < 0.14 and 0.06 < counts["other"] / total < 0.14


def test_masked_positions_head_equals_the_full_hf_loss(cache, tiny_bert_dir, wordpiece_dir):
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    model = AutoModelForPreTraining.from_pretrained(tiny_bert_dir).eval()
    source = MlmNspBatches(cache, np.arange(cache.n_docs), tok, 64, 8, 0.15, 0, len(tok))
    batch = source.batch(0, 0)
    ours = MaskedPositionsPretraining(model)(**batch)
    full_labels = torch.full_like(batch["input_ids"], -100)
    valid = batch["masked_labels"] != -100
    rows = torch.arange(8)[:, None].expand_as(batch["masked_positions"])
    full_labels[rows[valid], batch["masked_positions"][valid]] = batch["masked_labels"][valid]
    hf = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
               attention_mask=batch.get("attention_mask"), labels=full_labels,
               next_sentence_label=batch["next_sentence_label"])
    torch.testing.assert_close(ours.loss, hf.loss, rtol=1e-5, atol=1e-5)


def test_pretraining_overfits_and_saves_a_standard_bert(cli, tmp_path, tiny_corpus, wordpiece_dir):
    """A few real lines repeated as documents, seen many times: the MLM loss must fall far below chance."""
    lines = [line[:150] for line in tiny_corpus.read_text().split("\n\n")[0].splitlines()[:4]]
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join("\n".join(lines) for _ in range(8)) + "\n")
    out = tmp_path / "bert"
    result = cli(*pretrain_args(small, wordpiece_dir, out, "--max-steps", "250", "--lr", "3e-3",
                                "--set", "train.log_every=5", "--set", "train.threads=2", "--set", "eval_fraction=0",
                                "--set", "train.schedule=constant"))
    assert result.code == 0, result.text
    curve = [loss for _, loss in losses(out)]
    # chance: ln(600) + ln(2) = 7.1; NSP is unlearnable here (every document is the same), so ~0.69 stays
    assert curve[0] > 6.5 and np.mean(curve[-5:]) < 4.5, curve
    tok = AutoTokenizer.from_pretrained(out / "model")
    mlm = AutoModelForMaskedLM.from_pretrained(out / "model")
    assert type(AutoModelForPreTraining.from_pretrained(out / "model")).__name__ == "BertForPreTraining"
    enc = tok("it is a truth universally [MASK] .", return_tensors="pt")
    assert mlm(**enc).logits.shape[-1] == len(tok)
    evaluated = cli("evaluate", out, "--json")
    assert evaluated.code == 0, evaluated.text
    assert '"mlm_accuracy"' in evaluated.out and '"nsp_accuracy"' in evaluated.out


def test_continued_pretraining_from_minilm_adds_heads(cli, tmp_path, tiny_corpus):
    out = tmp_path / "minilm-mlm"
    result = cli("pretrain", "--init", "minilm", "--corpus", tiny_corpus, "--seq-len", "32", "--batch-size", "4",
                 "--max-steps", "2", "--out", out)
    assert result.code == 0, result.text
    model = AutoModelForPreTraining.from_pretrained(out / "model")
    assert model.config.vocab_size == 30522 and model.config.num_hidden_layers == 6


def test_held_out_documents_are_whole_and_disjoint(cache):
    train, held = split_documents(cache, 0.05)
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == cache.n_docs
    held_tokens = np.diff(cache.doc_starts)[held].sum()
    assert 0.05 * cache.n_tokens <= held_tokens < 0.3 * cache.n_tokens
