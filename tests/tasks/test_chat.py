"""Dialogue fine-tuning: the chat template round trip, loss on assistant turns only, overfit, the terminal chat."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.data.chat_format import IM_END, encode_conversation, ensure_chat_tokens
from lmforge.data.conversations import load_conversations
from lmforge.errors import DataError
from tests.conftest import write_jsonl
from tests.helpers import finetune_losses

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
    curve = finetune_losses(cli, "chat", gpt_run, data, out, "--max-steps", "60", "--lr", "5e-3", "--batch-size", "8")
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


def test_bundled_dialogue_loads_with_a_held_out_dev_split():
    train, dev = load_conversations("dialogue"), load_conversations("dialogue:dev")
    assert (len(train), len(dev)) == (808, 90) and train.items[0][0]["role"] == "user"
    assert not {str(c) for c in train.items} & {str(c) for c in dev.items}


# the template SmolLM2-Instruct ships: a default system message when the conversation has none
SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")


def test_a_models_own_template_is_kept_and_only_replies_are_learned(bpe_dir):
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.chat_template = SMOLLM2_TEMPLATE
    ensure_chat_tokens(tok)
    assert tok.chat_template == SMOLLM2_TEMPLATE  # not replaced by ChatML
    conversation = CONVERSATION[1:]  # no system message: the template adds its own
    ids, labels = encode_conversation(tok, conversation, 512)
    rendered = tok.apply_chat_template(conversation, tokenize=True)
    assert ids == list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    assert "named SmolLM" in tok.decode(ids)
    learned = tok.decode([t for t, label in zip(ids, labels) if label != -100])
    assert learned == f"Machines that think.{IM_END}Mostly.{IM_END}"


def test_a_template_that_refuses_the_conversation_is_a_data_error(bpe_dir):
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.chat_template = "{{ raise_exception('no system messages') if messages[0]['role'] == 'system' else '' }}"
    with pytest.raises(DataError, match="refuses this conversation: no system messages"):
        encode_conversation(tok, CONVERSATION, 512)


def test_lora_fine_tuning_learns_and_saves_a_merged_model_and_the_adapter(tmp_path, tiny_llama_dir, cli):
    import torch
    from peft import PeftModel

    data = write_jsonl(tmp_path / "one.jsonl", [{"messages": CONVERSATION[1:3]}] * 16)
    out = tmp_path / "lora"
    curve = finetune_losses(cli, "chat", tiny_llama_dir, data, out, "--lora", "--max-steps", "40", "--lr", "2e-2",
                            "--batch-size", "8", "--set", "lora.rank=8")
    assert curve[-1] < 0.5 * curve[0], curve  # the adapters alone learn the conversation
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()  # plain transformers, no peft
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template  # the model's own
    ids = torch.tensor([tok.apply_chat_template(CONVERSATION[1:2], add_generation_prompt=True, tokenize=True)
                        ["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, out / "model" / "adapter").eval()  # (injects into base)
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged(ids).logits, before, atol=1e-3)  # and training did change the model
    info = __import__("yaml").safe_load((out / "lmforge.yaml").read_text())
    assert info["config"]["lora"]["enabled"] is True and info["config"]["lora"]["rank"] == 8


def test_batches_of_long_examples_are_split_to_a_token_budget():
    from lmforge.data.chat_format import ChatBatches

    rng = np.random.default_rng(0)
    encoded = [([1] * int(n), [1] * int(n)) for n in rng.integers(10, 500, size=200)]
    source = ChatBatches(encoded, batch_size=16, seed=0, pad_id=0, max_tokens=2048)
    shapes = [source.batch(0, i)["input_ids"].shape for i in range(source.num_batches(0))]
    assert all(rows * width <= 2048 or rows == 1 for rows, width in shapes)
    assert max(rows for rows, _ in shapes) == 16 and sum(rows for rows, _ in shapes) == 200
    seen = sorted(int(i) for b in source._order(0) for i in b)
    assert seen == list(range(200))


def test_chat_lora_gives_a_base_gemma3_a_template_and_the_chat_route_opens(tmp_path, tiny_gemma3_dir, cli):
    """The embedded gemma3 has no chat template: chat SFT adds ChatML, learns the replies, and the tuned run
    chats where the base model is refused with the command that tunes it."""
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    assert AutoTokenizer.from_pretrained(tiny_gemma3_dir).chat_template is None
    data = write_jsonl(tmp_path / "one.jsonl", [{"messages": CONVERSATION[1:3]}] * 16)
    out = tmp_path / "chat-gemma3"
    curve = finetune_losses(cli, "chat", tiny_gemma3_dir, data, out, "--lora", "--max-steps", "40", "--lr", "2e-2",
                            "--batch-size", "8", "--set", "lora.rank=8")
    assert curve[-1] < curve[0] - 1, curve  # measured 5.30 -> 3.82: adapters on a frozen random model learn slowly
    assert IM_END in AutoTokenizer.from_pretrained(out / "model").chat_template
    app = create_app([f"base={tiny_gemma3_dir}", f"tuned={out}"], ServeSettings(), load_in_background=False)
    with TestClient(app) as client:
        ask = {"messages": [CONVERSATION[1]], "max_tokens": 8, "temperature": 0}
        refused = client.post("/v1/chat/completions", json={**ask, "model": "base"})
        assert refused.status_code == 400 and "finetune chat" in refused.json()["error"]["message"], refused.text
        answered = client.post("/v1/chat/completions", json={**ask, "model": "tuned"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"].strip()
