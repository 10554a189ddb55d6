"""Decoders for the generation tests: the tiny GPT-2 run, a tiny random Llama and Gemma 3 built in code."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def model_and_tok(gpt_run):
    return (AutoModelForCausalLM.from_pretrained(gpt_run / "model").eval(),
            AutoTokenizer.from_pretrained(gpt_run / "model"))


@pytest.fixture(scope="module")
def tiny_llama(bpe_dir):
    """A tiny random Llama built in code: grouped-query attention (4 heads, 2 KV heads), RoPE, tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    for p in model.parameters():  # a sharper model than the init, so greedy choices are not near-ties
        p.data *= 4
    return model, tok


@pytest.fixture(scope="module")
def tiny_gemma3(tiny_gemma3_dir):
    from transformers import Gemma3ForCausalLM

    return Gemma3ForCausalLM.from_pretrained(tiny_gemma3_dir).eval(), AutoTokenizer.from_pretrained(tiny_gemma3_dir)
