"""`lmforge quickstart --no-serve` on the real defaults (MiniLM, movie reviews) with a tiny budget."""

from __future__ import annotations

import json

import pytest


def test_quickstart_fine_tunes_evaluates_and_reports(cli, tmp_path):
    out = tmp_path / "qs"
    result = cli("quickstart", "--no-serve", "--max-time", "8s", "--out", out)
    assert result.code == 0, result.text
    assert "test accuracy" in result.out and "majority class" in result.out and str(out / "sentiment") in result.out
    evaluation = json.loads((out / "sentiment" / "eval.json").read_text())
    assert evaluation["data"] == "movie-reviews:test" and evaluation["n"] == 1004
    assert evaluation["accuracy"] > evaluation["baseline"]["accuracy"]  # even 8 seconds of training beats it
    assert (out / "sentiment" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_quickstart_from_scratch(cli, tmp_path):
    out = tmp_path / "qs"
    result = cli("quickstart", "--from-scratch", "--no-serve", "--max-time", "10s", "--out", out)
    assert result.code == 0, result.text
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "pretrain" / "model" / "config.json").exists()
    assert json.loads((out / "sentiment" / "eval.json").read_text())["n"] == 1004
