"""T5-style span-corruption pretraining: exact-length corrupted inputs, the loss falls, a plain T5 folder that
transformers loads and answers identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from lmforge.data.span_corruption import sentinel_tokens
from lmforge.data.token_cache import token_cache
from lmforge.tasks.lm import document_stream
from lmforge.tasks.pretrain_span import SpanCorruptionBatches, prepare_t5_tokenizer, raw_length
from tests.helpers import losses

TINY_T5 = ["--set", "arch.d_model=32", "--set", "arch.d_ff=64", "--set", "arch.num_layers=2", "--set",
           "arch.num_heads=2", "--set", "arch.d_kv=16"]


@pytest.mark.parametrize("seq_len", [16, 64, 257, 512])
def test_chunks_corrupt_to_exactly_seq_len_so_nothing_is_padded(seq_len, tiny_corpus, bpe_dir):
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    sentinels, eos = prepare_t5_tokenizer(tok)
    assert tok.convert_ids_to_tokens(sentinels[:2]) == sentinel_tokens(2) and tok.pad_token is not None
    cache = token_cache(tok, [tiny_corpus])
    stream = document_stream(cache, np.arange(cache.n_docs), eos)
    raw = raw_length(seq_len, 0.15, 3.0)
    source = SpanCorruptionBatches(stream, raw, 4, 0, sentinels, eos, 0.15, 3.0)
    batch = source.batch(0, 1)
    assert batch["input_ids"].shape == (4, seq_len) and bool(batch["attention_mask"].all())
    assert torch.equal(source.batch(0, 1)["labels"], batch["labels"])  # the same masks on a resume
    assert not torch.equal(source.batch(1, 1)["input_ids"], batch["input_ids"])  # fresh ones each epoch
    assert raw_length(seq_len + 1, 0.15, 3.0) >= raw


def test_span_corruption_learns_and_saves_a_plain_t5(cli, tmp_path, tiny_corpus, bpe_dir):
    import lmforge

    lines = tiny_corpus.read_text().split("\n\n")[0].splitlines()[:3]
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join("\n".join(line[:200] for line in lines) for _ in range(10)) + "\n")
    out = tmp_path / "t5"
    result = cli("pretrain", "--objective", "span-corruption", "--corpus", small, "--tokenizer", bpe_dir, "--size",
                 "tiny", *TINY_T5, "--seq-len", "32", "--batch-size", "8", "--max-steps", "100", "--lr", "3e-3",
                 "--out", out, "--set", "eval_fraction=0", "--set", "train.log_every=10", "--set", "train.threads=1")
    assert result.code == 0, result.text
    curve = [loss for _, loss in losses(out)]
    assert curve[-1] < curve[0] - 2.0, curve  # perplexity down more than 7-fold
    model = T5ForConditionalGeneration.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert "<extra_id_0>" in tok.get_vocab() and model.config.decoder_start_token_id == tok.pad_token_id
    text = " ".join(lines[0].split()[:4]) + " <extra_id_0> " + " ".join(lines[0].split()[6:10])
    with torch.no_grad():
        ids = model.generate(**tok([text], return_tensors="pt"), max_new_tokens=8, num_beams=2)
    theirs = tok.decode(ids[0], skip_special_tokens=False)
    ours = lmforge.load(out).predict(text, max_new_tokens=8, num_beams=2)[0]["text"]
    assert ours.startswith("<extra_id_0>") and ours.split() == [
        w for w in theirs.replace(tok.pad_token, " ").replace(tok.eos_token, " ").split()]
    scored = json.loads(cli("evaluate", out, "--data", small, "--json").out)
    assert scored["loss"] < curve[0] and scored["token_accuracy"] > 0.3
