"""GPT-style causal LM pretraining: packed full windows, overfit, standard HF artifacts, perplexity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.data.token_cache import token_cache
from lmforge.tasks.lm import PackedWindows, document_stream
from tests.helpers import losses


def test_windows_are_full_and_documents_end_with_eos(tiny_corpus, bpe_dir):
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    cache = token_cache(tok, [tiny_corpus])
    stream = document_stream(cache, np.arange(cache.n_docs), tok.eos_token_id)
    assert (stream == tok.eos_token_id).sum() == cache.n_docs
    assert len(stream) == cache.n_tokens + cache.n_docs
    windows = PackedWindows(stream, seq_len=64, batch_size=8, seed=0)
    batch = windows.batch(0, 3)
    assert batch["input_ids"].shape == (8, 64) and "attention_mask" not in batch  # nothing to pad
    assert torch.equal(batch["input_ids"], batch["labels"])  # HF shifts inside the model
    starts = {int(windows._plan(0)[0] + r * 64) for r in windows._plan(0)[1][:16]}
    assert len(starts) == 16  # distinct windows
    assert windows._plan(0)[0] != windows._plan(1)[0] or not np.array_equal(windows._plan(0)[1], windows._plan(1)[1])


def test_clm_overfits_and_saves_a_standard_gpt2(cli, tmp_path, tiny_corpus, bpe_dir):
    lines = tiny_corpus.read_text().split("\n\n")[0].splitlines()[:3]
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join("\n".join(line[:200] for line in lines) for _ in range(10)) + "\n")
    out = tmp_path / "gpt"
    result = cli("pretrain", "--objective", "clm", "--corpus", small, "--tokenizer", bpe_dir, "--size", "tiny",
                 "--set", "arch.n_embd=64", "--set", "arch.n_layer=2", "--set", "arch.n_head=2", "--seq-len", "32",
                 "--batch-size", "8", "--max-steps", "120", "--lr", "3e-3", "--out", out, "--set", "eval_fraction=0",
                 "--set", "train.log_every=10", "--set", "train.threads=2")
    assert result.code == 0, result.text
    curve = [loss for _, loss in losses(out)]
    assert curve[0] > 5.5 and curve[-1] < 1.5, curve  # ln(500) = 6.2: the repeated text is memorised
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(model).__name__ == "GPT2LMHeadModel"
    tok = AutoTokenizer.from_pretrained(out / "model")
    prompt = lines[0][:40]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    hf = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    ours = cli("generate", out, prompt, "--max-new-tokens", "12", "--temperature", "0", "--json")
    assert json.loads(ours.out)["text"] == tok.decode(hf[0, ids.shape[1]:], skip_special_tokens=True)
    assert json.loads(ours.out)["text"].startswith(lines[0][40:47])  # it continues the memorised line


def test_evaluate_reports_the_loss_plain_transformers_computes(cli, gpt_run, tmp_path):
    # held-out text given as a corpus file: every document, each ended by EOS, cut into full windows of seq_len 64
    docs = [("It is a truth universally acknowledged, that a single man in possession of a good fortune.\n"
            "However little known the feelings or views of such a man may be."), "You will be fortunate.\nSoon."] * 6
    corpus = tmp_path / "held_out.txt"
    corpus.write_text("\n\n".join(docs) + "\n")
    result = cli("evaluate", gpt_run, "--data", corpus, "--json")
    assert result.code == 0, result.text
    metrics = json.loads(result.out)
    tok = AutoTokenizer.from_pretrained(gpt_run / "model")
    model = AutoModelForCausalLM.from_pretrained(gpt_run / "model").eval()
    stream = []
    for doc in docs:
        for line in doc.splitlines():
            stream += tok(line + "\n", add_special_tokens=False)["input_ids"]
        stream.append(tok.eos_token_id)
    windows = torch.tensor(stream[: len(stream) // 64 * 64]).view(-1, 64)
    with torch.no_grad():
        reference = float(np.mean([model(input_ids=w[None], labels=w[None]).loss for w in windows]))
    assert metrics["loss"] == pytest.approx(reference, rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(np.exp(reference), rel=1e-4) and metrics["task"] == "clm"


def test_chunked_head_loss_and_gradients_equal_the_hf_head():
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.training.objectives import CausalLMObjective

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0,
                                       attn_pdrop=0))
    ids = torch.randint(0, 300, (3, 29))
    labels = ids.clone()
    labels[0, :10] = -100  # e.g. a prompt that carries no loss
    twin = copy.deepcopy(model)
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    ours = CausalLMObjective(twin, chunk=7)(input_ids=ids, labels=labels).loss  # chunks that do not divide evenly
    ours.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
