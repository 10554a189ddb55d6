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
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


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


# ------------------------------------------------------------------------------------- the generated CLI
def _help(cli, monkeypatch, *command: str) -> str:
    result = cli(*command, "--help")
    assert result.code == 0, result.text
    return result.out


def _option_line(text: str, flag: str) -> str:
    """An option's whole entry in --help, its wrapped lines joined (click may break lines after a hyphen)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):  # an option starts at the options' indent; wrapped lines are indented deeper
            blocks.append(line.strip())
        elif blocks and line.strip():
            blocks[-1] += ("" if blocks[-1].endswith("-") else " ") + line.strip()
    return next(b for b in blocks if b.startswith(flag + " ") or b == flag)


@pytest.mark.parametrize("task_name", ["classify", "chat", "code"])
def test_finetune_help_comes_from_the_tasks_own_config(cli, monkeypatch, task_name):
    from lmforge.cli import RUN_OPTIONS, flag_name
    from lmforge.config import field_of
    from lmforge.tasks import registry

    task = registry.get(task_name)
    text = _help(cli, monkeypatch, "finetune", task_name)
    assert task.summary in " ".join(text.split())
    for key in (*task.flags, *RUN_OPTIONS):
        info = field_of(task.config, key)
        line = _option_line(text, flag_name(key, info))
        assert info.description in line, (key, line)
        default = info.get_default(call_default_factory=True)
        if default not in (None, False) and not info.is_required():
            assert f"[default: {default}]" in line, (key, line)
    assert "null" not in text and "<bool>" not in text


def test_each_command_shows_its_own_defaults(cli, monkeypatch):
    chat, classify = _help(cli, monkeypatch, "finetune", "chat"), _help(cli, monkeypatch, "finetune", "classify")
    assert "2e-4 with --lora, else 5e-5" in _option_line(chat, "--lr")
    assert "[default: 16]" in _option_line(chat, "--batch-size") and "model/adapter" in _option_line(chat, "--lora")
    assert "[default: 5e-05]" in _option_line(classify, "--lr")
    pretrain = _help(cli, monkeypatch, "pretrain")
    assert "by --size: tiny 1e-3" in _option_line(pretrain, "--lr")
    from lmforge.tasks import registry

    objectives = sorted(t.name for t in registry.tasks("pretrain"))  # the objectives come from the registry
    assert {"clm", "mlm-nsp", "span-corruption"} <= set(objectives) and f"[{'|'.join(objectives)}]" in pretrain
    assert "--drain-timeout" in _help(cli, monkeypatch, "serve")  # serve options come from its settings


def test_predict_fills_masks_with_a_pretrained_bert(cli, pretrained_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    text = "It is a truth universally [MASK] that a single man."
    result = cli("predict", pretrained_run, text, "--top-k", "3")
    assert result.code == 0, result.text
    row = json.loads(result.out)
    (candidates,) = row["masks"]
    assert len(candidates) == 3 and [c["score"] for c in candidates] == sorted((c["score"] for c in candidates),
                                                                                reverse=True)
    # the same answer as plain transformers on the saved folder
    tokenizer = AutoTokenizer.from_pretrained(pretrained_run / "model")
    model = AutoModelForMaskedLM.from_pretrained(pretrained_run / "model").eval()
    encoded = tokenizer(text, return_tensors="pt")
    position = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
    best = int(model(**encoded).logits[0, position].argmax())
    assert candidates[0]["token"] == tokenizer.decode([best]).strip()
    filled = encoded["input_ids"][0].clone()
    filled[position] = best
    assert row["filled"] == tokenizer.decode(filled, skip_special_tokens=True)
    missing = cli("predict", pretrained_run, "no mask here")
    assert missing.code == 2 and "has no [MASK] token" in missing.err


def test_predict_on_a_causal_lm_points_to_generate(cli, gpt_run):
    result = cli("predict", gpt_run, "Once upon a time")
    assert result.code == 2 and "lmforge generate" in result.err and result.out == ""


def test_config_that_is_a_folder_names_the_flag(cli, tmp_path):
    result = cli("finetune", "classify", "--config", tmp_path, "--data", "spam", "--out", tmp_path / "o")
    assert result.code == 2 and "--config" in result.err and "is a folder, not a config file" in result.err


def test_predict_input_without_text_field_names_only_the_text_field(cli, tmp_path, pretrained_run):
    rows = write_jsonl(tmp_path / "bad.jsonl", [{"review": "fine"}])
    result = cli("predict", pretrained_run, "--input", rows)
    assert result.code == 2 and "no 'text' field (fields present: review)" in result.err
    assert "None" not in result.err and "--text-field" in result.err


def test_failed_tokenizer_training_leaves_no_folder(cli, tmp_path):
    empty = tmp_path / "blank.txt"
    empty.write_text("\n\n\n")
    out = tmp_path / "tok"
    result = cli("tokenizer", "train", "--corpus", empty, "--out", out)
    assert result.code == 2 and not out.exists()


def test_existing_output_is_refused_before_any_work(cli, tmp_path, tiny_corpus, wordpiece_dir, pretrained_run):
    # pretraining would tokenize the corpus first (tens of seconds on a real one): the refusal comes before that
    big = tmp_path / "big.txt"
    big.write_text(tiny_corpus.read_text() * 3)
    result = cli(*pretrain_args(big, wordpiece_dir, pretrained_run, "--max-steps", "1"))
    assert result.code == 2 and "already exists" in result.err
    assert "tokeniz" not in result.err
    tok = cli("tokenizer", "train", "--corpus", tmp_path / "missing.txt", "--out", wordpiece_dir)
    assert tok.code == 2 and "already exists" in tok.err


def test_long_reads_report_progress(cli, tmp_path, tiny_corpus):
    """Tokenizer training and corpus tokenization take tens of seconds on a real corpus: neither is silent."""
    out = tmp_path / "tok"
    result = cli("tokenizer", "train", "--corpus", tiny_corpus, "--vocab-size", "300", "--out", out)
    assert result.code == 0, result.text
    assert "reading the corpus for the wordpiece tokenizer" in result.err and "done in" in result.err
    from tests.helpers import pretrain_args

    run = cli(*pretrain_args(tiny_corpus, out, tmp_path / "bert", "--max-steps", "1"))  # a new tokenizer: no cache
    assert run.code == 0 and "tokenizing the corpus (once; cached)" in run.err
