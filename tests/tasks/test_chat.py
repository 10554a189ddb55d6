"""Dialogue fine-tuning: the chat template round trip, loss on assistant turns only, overfit, the terminal chat."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.data.conversations import load_conversations
from lmforge.errors import DataError
from lmforge.tasks.chat import IM_END, encode_conversation, ensure_chat_tokens
from tests.conftest import write_jsonl
from tests.helpers import losses

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is AI?"},
    {"role": "assistant", "content": "Machines that think."},
    {"role": "user", "content": "Really?"},
    {"role": "assistant", "content": "Mostly."},
]


def test_template_round_trip_and_assistant_only_labels(chat_run):
    tok = AutoTokenizer.from_pretrained(chat_run / "model")  # the template travels with the tokenizer
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=True)
    rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    ids, labels = encode_conversation(tok, CONVERSATION, 512)
    assert ids == rendered
    learned = tok.decode([t for t, label in zip(ids, labels) if label != -100])
    assert learned == f"Machines that think.{IM_END}Mostly.{IM_END}"
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_markers_are_added_to_a_tokenizer_without_them(bpe_dir, gpt_run):
    tok = AutoTokenizer.from_pretrained(gpt_run / "model")
    model = AutoModelForCausalLM.from_pretrained(gpt_run / "model")
    before = len(tok)
    ensure_chat_tokens(tok, model)
    assert len(tok) == before  # our BPE tokenizer ships the markers already
    from transformers import GPT2Config, GPT2LMHeadModel

    plain = AutoTokenizer.from_pretrained(bpe_dir)
    plain.add_tokens(["<|extra|>"])
    vocab_model = GPT2LMHeadModel(GPT2Config(vocab_size=len(plain), n_embd=16, n_layer=1, n_head=1))
    ensure_chat_tokens(plain, vocab_model)
    assert plain.chat_template and vocab_model.get_input_embeddings().weight.shape[0] == len(plain)


def test_chat_overfits_one_conversation_and_answers_it(tmp_path, gpt_run, cli):
    data = write_jsonl(tmp_path / "one.jsonl", [{"messages": CONVERSATION[1:3]}] * 16)
    out = tmp_path / "chat"
    result = cli("finetune", "chat", "--model", gpt_run, "--data", data, "--eval", data, "--out", out,
                 "--max-steps", "60", "--lr", "5e-3", "--batch-size", "8", "--set", "train.log_every=5")
    assert result.code == 0, result.text
    curve = [loss for _, loss in losses(out)]
    assert curve[-1] < 0.2 * curve[0], curve
    proc = subprocess.run([sys.executable, "-m", "lmforge", "chat", str(out), "--temperature", "0"],
                          input="What is AI?\n/reset\nWhat is AI?\n/exit\n", capture_output=True, text=True, check=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    replies = [line.split("bot> ", 1)[1] for line in proc.stdout.splitlines() if "bot> " in line]
    assert replies == ["Machines that think."] * 2, proc.stdout
    assert "conversation cleared" in proc.stderr


def test_bad_conversations_are_reported_with_lines(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "robot", "content": "beep"}]},
        {"text": "no messages"},
        {"messages": [{"role": "user", "content": "only a question"}]},
    ])
    with pytest.raises(DataError) as err:
        load_conversations(str(path))
    message = str(err.value)
    assert f"{path}:2: message 0 must be" in message and f"{path}:3: 'messages' must be" in message
    assert f"{path}:4: no assistant message" in message


def test_bundled_dialogue_loads():
    data = load_conversations("dialogue")
    assert len(data) == 898 and data.items[0][0]["role"] == "user"
