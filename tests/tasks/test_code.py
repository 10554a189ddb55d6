"""Code: prompt/body split, the doctest sandbox (timeout, no network), and evaluation of a code run."""

from __future__ import annotations

import json

import pytest

from lmforge.evaluation.sandbox import run_doctests
from lmforge.tasks.code import cut_function, split_prompt

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
    from lmforge.config import FinetuneCodeConfig
    from lmforge.tasks.code import finetune_code

    out = tmp_path_factory.mktemp("code") / "run"
    finetune_code(FinetuneCodeConfig.model_validate({
        "model": str(gpt_run), "data": "code", "out": str(out), "seq_len": 64,
        "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3}}), show_progress=False)
    return out


def test_code_run_evaluation_reports_parse_rate_chrf_and_pass_at_1(cli, code_run, tmp_path):
    from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl

    rows = read_jsonl_gz(BUNDLED / "code" / "stdlib_functions.test.jsonl.gz")
    with_doctests = [r for r in rows if r["module"] == "statistics" and ">>>" in r["docstring"] and "." not in r["name"]]
    data = write_jsonl(tmp_path / "held_out.jsonl", rows[:8] + with_doctests[:4])
    result = cli("evaluate", code_run, "--data", data, "--json")
    assert result.code == 0, result.text
    metrics = json.loads(result.out)
    assert metrics["n"] >= 10 and 0 <= metrics["parse_rate"] <= 1 and 0 <= metrics["chrf"] <= 100
    assert metrics["doctest_functions"] >= 3 and 0 <= metrics["pass_at_1"] <= 1
    assert metrics["perplexity"] > 1 and len(metrics["examples"]) == 5
