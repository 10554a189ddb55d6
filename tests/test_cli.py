"""Each CLI command end to end on tiny models and real data subsets, plus the bad-input paths (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import write_jsonl
from tests.helpers import files_under, pretrain_args


def test_help_is_fast_and_imports_no_torch():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - start
    assert "pretrain" in out.stdout and "finetune" in out.stdout
    assert elapsed < 3.0  # well under a second on a warm machine; generous for loaded CI
    probe = "import sys, lmforge.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"


def test_datasets_list(cli):
    result = cli("datasets", "list", "--json")
    assert result.code == 0
    rows = {r["name"]: r for r in json.loads(result.out)}
    assert {"corpus", "movie-reviews", "spam", "wordnet-topics"} <= set(rows)
    assert rows["spam"]["license"] == "Apache-2.0" and rows["movie-reviews"]["task"] == "classify"
    table = cli("datasets", "list")
    assert "wordnet-topics" in table.out and "WordNet 3.0 license" in table.out


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, wordpiece_dir, tiny_corpus):
    from lmforge.cli import main

    out = tmp_path_factory.mktemp("runs") / "bert"
    with pytest.raises(SystemExit) as done:
        main(pretrain_args(tiny_corpus, wordpiece_dir, out, "--max-steps", "12"))
    assert done.value.code == 0
    return out


def test_pretrain_writes_the_documented_run_dir(pretrained_run):
    files = files_under(pretrained_run)
    assert {"lmforge.yaml", "metrics.jsonl", "loss.png", "model/config.json", "model/model.safetensors",
            "model/tokenizer.json", "model/tokenizer_config.json"} <= files
    checkpoint = {f for f in files if f.startswith("checkpoints/step-000012/")}
    assert checkpoint == {f"checkpoints/step-000012/{n}" for n in
                          ("COMPLETE", "model.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json")}
    assert not {f for f in files if f.startswith("model/") and f.endswith((".bin", ".pt", ".pkl"))}
    import yaml

    info = yaml.safe_load((pretrained_run / "lmforge.yaml").read_text())
    assert info["task"] == "mlm-nsp" and info["config"]["seq_len"] == 32
    assert info["corpus"]["files"][0]["sha256"]


def test_finetune_evaluate_predict_from_a_pretrained_run(cli, pretrained_run, sentiment_files, tmp_path):
    out = tmp_path / "sent"
    result = cli("finetune", "classify", "--model", pretrained_run, "--data", sentiment_files["train"],
                 "--eval", sentiment_files["dev"], "--out", out, "--max-steps", "6", "--batch-size", "16")
    assert result.code == 0, result.text
    assert "kept model/" in result.out
    ev = cli("evaluate", out, "--data", sentiment_files["test"], "--json")
    assert ev.code == 0, ev.text
    metrics = json.loads(ev.out)
    assert metrics["n"] == 60 and 0 <= metrics["accuracy"] <= 1 and set(metrics["per_class"]) == {"negative", "positive"}
    assert (out / "eval.json").exists() and (out / "confusion.png").exists()
    pred = cli("predict", out, "a fine film", "a boring film")
    lines = [json.loads(x) for x in pred.out.splitlines()]
    assert [x["text"] for x in lines] == ["a fine film", "a boring film"]
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-5 for x in lines)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "three"}])
    target = tmp_path / "preds.jsonl"
    assert cli("predict", out, "--input", inputs, "--output", target).code == 0
    assert len(target.read_text().splitlines()) == 3
    again = cli("predict", out, "--input", inputs, "--output", target)
    assert again.code == 2 and "--overwrite" in again.err


def test_existing_run_dir_needs_overwrite(cli, sentiment_files, tmp_path, tiny_bert_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["finetune", "classify", "--model", tiny_bert_dir, "--data", sentiment_files["train"], "--out", out,
            "--max-steps", "1"]
    first = cli(*args)
    assert first.code == 2 and "already exists" in first.err and "--overwrite" in first.err
    refused = cli(*args, "--overwrite")
    assert refused.code == 2 and "not an lmforge run" in refused.err
    assert (out / "notes.txt").read_text() == "mine"


def _write(path, text: bytes):
    path.write_bytes(text)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "not found"),
        ("empty", "is empty"),
        ("bad_json", "bad.jsonl:2: invalid JSON"),
        ("bad_utf8", "bad.jsonl:1: invalid UTF-8"),
        ("missing_field", "no 'label' field (fields present: text, stars)"),
        ("unseen_label", "'neutral' (1 row, first at"),
        ("tiny_class", "'rare': 1 example"),
        ("bad_set", "unknown key 'train.lrr'"),
        ("bad_model", "model 'no/such/model' not found"),
    ],
)
def test_bad_inputs_exit_2_with_one_clear_message(cli, tmp_path, sentiment_files, tiny_bert_dir, case, expected):
    train, dev = str(sentiment_files["train"]), str(sentiment_files["dev"])
    model = str(tiny_bert_dir)
    extra: list[str] = []
    if case == "missing":
        train = str(tmp_path / "missing.jsonl")
    elif case == "empty":
        train = str(_write(tmp_path / "empty.jsonl", b""))
    elif case == "bad_json":
        train = str(_write(tmp_path / "bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n'))
    elif case == "bad_utf8":
        train = str(_write(tmp_path / "bad.jsonl", b'{"text": "\xff", "label": "x"}\n'))
    elif case == "missing_field":
        train = str(write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "stars": 3}]))
    elif case == "unseen_label":
        dev = str(write_jsonl(tmp_path / "d.jsonl", [{"text": "meh", "label": "neutral"}]))
    elif case == "tiny_class":
        rows = [json.loads(x) for x in sentiment_files["train"].read_text().splitlines()]
        train = str(write_jsonl(tmp_path / "t.jsonl", rows + [{"text": "odd", "label": "rare"}]))
    elif case == "bad_set":
        extra = ["--set", "train.lrr=1"]
    elif case == "bad_model":
        model = "no/such/model"
    result = cli("finetune", "classify", "--model", model, "--data", train, "--eval", dev, "--out", tmp_path / "o",
                 "--max-steps", "1", *extra)
    assert result.code == 2, result.text
    assert expected in result.err, result.err
    assert "Traceback" not in result.text
    assert result.err.startswith("error:")


def test_corpus_too_small_for_sequence_length(cli, tmp_path, wordpiece_dir):
    corpus = tmp_path / "small.txt"
    corpus.write_text("Just one short line.\n\nAnd another document.\n")
    result = cli(*pretrain_args(corpus, wordpiece_dir, tmp_path / "o", "--max-steps", "1"))
    assert result.code == 2 and "too small for seq_len 32" in result.err and "--set seq_len" in result.err


def test_pretrain_without_tokenizer_or_init(cli, tmp_path):
    result = cli("pretrain", "--out", tmp_path / "o")
    assert result.code == 2 and "needs a tokenizer" in result.err


def test_corpus_flag_takes_several_values(cli, tmp_path, tiny_corpus):
    second = tmp_path / "more.txt"
    second.write_text("More text here.\nAnd more.\n")
    out = tmp_path / "tok"
    result = cli("tokenizer", "train", "--corpus", tiny_corpus, second, "--kind", "wordpiece", "--vocab-size", "300",
                 "--out", out)
    assert result.code == 0, result.text
    assert (out / "tokenizer.json").exists()


def test_generate_streams_and_is_reproducible(cli, gpt_run):
    plain = cli("generate", gpt_run, "It is a truth", "--max-new-tokens", "12", "--seed", "5")
    streamed = cli("generate", gpt_run, "It is a truth", "--max-new-tokens", "12", "--seed", "5", "--stream")
    assert plain.code == 0 and plain.out == streamed.out and plain.out.startswith("It is a truth")
    as_json = json.loads(cli("generate", gpt_run, "It is a truth", "--max-new-tokens", "5", "--json").out)
    assert as_json["completion_tokens"] <= 5 and as_json["finish_reason"] in ("stop", "length")
    wrong = cli("generate", gpt_run, "x", "--top-p", "3")
    assert wrong.code == 2


def test_generate_refuses_a_classifier(cli, tmp_path, tiny_bert_dir, sentiment_files):
    out = tmp_path / "clf"
    assert cli("finetune", "classify", "--model", tiny_bert_dir, "--data", sentiment_files["train"], "--out", out,
               "--max-steps", "1").code == 0
    result = cli("generate", out, "hello")
    assert result.code == 2 and "generation needs a causal LM" in result.err
