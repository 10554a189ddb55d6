"""Code: prompt/body split, the doctest sandbox (timeout, no network), and evaluation of a code run."""

from __future__ import annotations

import json

import pytest

from lmforge.evaluation.sandbox import run_doctests
from lmforge.tasks.code import cut_function, defines_body, split_prompt

CODE = 'def double(x):\n    """Twice x.\n\n    >>> double(2)\n    4\n    """\n    return x * 2\n'
DOC = "Twice x.\n\n>>> double(2)\n4"


def test_prompt_is_signature_and_docstring():
    prompt, body = split_prompt(CODE)
    assert prompt.endswith('    """\n') and body == "    return x * 2\n"
    assert split_prompt("def f():\n    return 1\n") is None  # no docstring to prompt with
    assert cut_function("    return 1\n\ndef other():\n    pass\n") == "    return 1\n"


def test_sandbox_passes_right_code_and_fails_wrong_code():
    assert run_doctests(None, "double", CODE, DOC).passed
    wrong = CODE.replace("x * 2", "x + 3")
    result = run_doctests(None, "double", wrong, DOC)
    assert not result.passed and result.failed == 1


def test_sandbox_kills_runaway_code_and_blocks_the_network():
    loop = run_doctests(None, "double", "def double(x):\n    while True:\n        pass\n", DOC, timeout=2)
    assert not loop.passed and "timed out" in loop.error
    net = "def double(x):\n    import socket\n    socket.create_connection(('example.com', 80))\n    return x * 2\n"
    assert not run_doctests(None, "double", net, DOC).passed
    spawn = "def double(x):\n    import subprocess\n    subprocess.run(['true'])\n    return x * 2\n"
    assert not run_doctests(None, "double", spawn, DOC).passed


def test_sandbox_runs_in_the_stdlib_module_namespace():
    code = 'def mean(data):\n    """x"""\n    return sum(data) / len(data)\n'
    assert run_doctests("statistics", "mean", code, ">>> mean([1, 2, 3, 4])\n2.5").passed


@pytest.fixture(scope="module")
def code_run(tmp_path_factory, gpt_run):
    from lmforge.tasks.code import FinetuneCodeConfig, finetune_code

    out = tmp_path_factory.mktemp("code") / "run"
    finetune_code(FinetuneCodeConfig.model_validate({
        "model": str(gpt_run), "data": "code", "out": str(out), "seq_len": 64,
        "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3}}), show_progress=False)
    return out


def _held_out(tmp_path):
    from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl

    rows = read_jsonl_gz(BUNDLED / "code" / "stdlib_functions.test.jsonl.gz")
    with_doctests = [r for r in rows if r["module"] == "statistics" and ">>>" in r["docstring"] and "." not in r["name"]]
    return write_jsonl(tmp_path / "held_out.jsonl", rows[:8] + with_doctests[:4]), rows[:8] + with_doctests[:4]


def _answer_with(monkeypatch, bodies: dict[str, str]) -> None:
    """Make the model answer each prompt with a fixed body (an oracle, or a model that writes nothing)."""
    from lmforge.inference.generation import Completion, TextGenerator

    def generate(self, prompts, params):
        return [Completion(bodies[p], "stop", 0, 0) for p in prompts]

    monkeypatch.setattr(TextGenerator, "generate", generate)


def test_code_metrics_are_perfect_for_the_reference_and_zero_for_empty_bodies(cli, code_run, tmp_path, monkeypatch):
    data, rows = _held_out(tmp_path)
    pairs = [split_prompt(r["code"]) for r in rows]
    references = {prompt: body for prompt, body in filter(None, pairs)}
    _answer_with(monkeypatch, references)
    oracle = json.loads(cli("evaluate", code_run, "--data", data, "--json").out)
    assert oracle["n"] == len(references) >= 10
    assert oracle["parse_rate"] == 1.0 and oracle["chrf"] == pytest.approx(100.0)
    assert oracle["doctest_functions"] >= 3 and oracle["pass_at_1"] == 1.0
    # a model that answers with a blank line leaves docstring-only functions: they parse, but define nothing
    _answer_with(monkeypatch, {prompt: "\n" for prompt in references})
    empty = json.loads(cli("evaluate", code_run, "--data", data, "--json").out)
    assert empty["parse_rate"] == 0.0 and empty["pass_at_1"] == 0.0 and empty["chrf"] < 5


def test_code_run_evaluation_runs_the_real_model(cli, code_run, tmp_path):
    from lmforge.tasks.code import STOP

    data, _ = _held_out(tmp_path)
    result = cli("evaluate", code_run, "--data", data, "--json")
    assert result.code == 0, result.text
    metrics = json.loads(result.out)
    assert metrics["n"] >= 10 and metrics["doctest_functions"] >= 3 and len(metrics["examples"]) == 5
    assert metrics["perplexity"] > 1
    # what was scored is the model's greedy completion, the same `lmforge generate` gives
    first = metrics["examples"][0]
    stops = [arg for stop in STOP for arg in ("--stop", stop)]
    generated = cli("generate", code_run, first["prompt"], "--temperature", "0", "--max-new-tokens", "128", *stops,
                    "--json")
    assert cut_function(json.loads(generated.out)["text"]) == first["completion"]


def test_a_chat_models_reply_gives_the_body_of_the_asked_function():
    from lmforge.tasks.code import body_from_reply

    reply = ("Sure:\n```python\ndef double(x):\n    \"\"\"Twice x.\"\"\"\n    y = x * 2\n    return y\n```\n"
             "It doubles x.")
    assert body_from_reply(reply, "double", "    ") == "    y = x * 2\n    return y\n"
    cut_short = "```python\ndef double(x):\n    y = x * 2\n    return y +"  # generation stopped mid-line
    assert body_from_reply(cut_short, "double", "    ") == "    y = x * 2\n"
    assert body_from_reply("```python\ndef other(x):\n    return x\n```", "double", "    ") == ""
    assert body_from_reply("I cannot help with that.", "double", "    ") == ""
    assert defines_body(split_prompt(CODE)[0], body_from_reply(reply, "double", "    "))


def test_a_chat_model_learns_to_answer_a_request_for_a_function(tmp_path, tiny_llama_dir, cli):
    """A model with a chat template is fine-tuned on requests answered with the function (the format evaluation
    asks in); the loss falls and the learned tokens are the answer only."""
    from transformers import AutoTokenizer

    from lmforge.data.chat_format import encode_conversation
    from lmforge.tasks.code import CHAT_INSTRUCTION, as_conversation
    from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl
    from tests.helpers import finetune_losses

    conversation = as_conversation(CODE)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids, labels = encode_conversation(tok, conversation, 512)
    learned = tok.decode([t for t, label in zip(ids, labels) if label != -100])
    assert learned.startswith("```python\ndef double(x):") and learned.endswith("```<|im_end|>")
    assert CHAT_INSTRUCTION not in learned and learned.count("def double") == 1

    rows = read_jsonl_gz(BUNDLED / "code" / "stdlib_functions.train.jsonl.gz", 4)
    data = write_jsonl(tmp_path / "four.jsonl", rows * 4)
    out = tmp_path / "code"
    curve = finetune_losses(cli, "code", tiny_llama_dir, data, out, "--max-steps", "40", "--lr", "1e-2",
                            "--batch-size", "4")
    assert curve[-1] < 0.5 * curve[0], curve
    info = (out / "lmforge.yaml").read_text()
    assert "format: 'chat: asked for the function" in info
