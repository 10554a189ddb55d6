"""Loop behaviour: budgets, gradient accumulation, checkpoint retention, metrics and the loss curve."""

from __future__ import annotations

import json

from lmforge.tasks.classify import FinetuneClassifyConfig, finetune_classify
from lmforge.training import checkpoint as ckpt


def _config(tmp_path, tiny_bert_dir, sentiment_files, **train) -> FinetuneClassifyConfig:
    return FinetuneClassifyConfig.model_validate({
        "model": str(tiny_bert_dir), "data": str(sentiment_files["train"]), "eval": str(sentiment_files["dev"]),
        "out": str(tmp_path / "run"), "train": {"batch_size": 16, "lr": 1e-3, "log_every": 1, **train}})


def test_gradient_accumulation_takes_one_step_per_group(tmp_path, tiny_bert_dir, sentiment_files):
    summary = finetune_classify(_config(tmp_path, tiny_bert_dir, sentiment_files, epochs=1, grad_accum=2),
                                show_progress=False)
    assert summary["steps"] == 240 // 16 // 2  # 15 batches of 16 -> 7 steps (the odd batch is left out)


def test_time_budget_stops_the_run_and_is_reported(tmp_path, tiny_bert_dir, sentiment_files):
    summary = finetune_classify(_config(tmp_path, tiny_bert_dir, sentiment_files, epochs=500, max_time=2),
                                show_progress=False)
    assert summary["stopped_by"] == "max_time" and summary["elapsed_s"] < 30
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] < 0.5 * max(lrs)  # the schedule decays towards the deadline


def test_checkpoints_are_kept_to_the_newest_k_and_metrics_have_everything(tmp_path, tiny_bert_dir, sentiment_files):
    finetune_classify(_config(tmp_path, tiny_bert_dir, sentiment_files, max_steps=12, save_every=2,
                              keep_checkpoints=2, eval_every=6), show_progress=False)
    run = tmp_path / "run"
    assert [step for step, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [10, 12]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"loss", "lr", "tokens_per_s", "examples_per_s", "elapsed_s", "epoch"} <= set(steps[0])
    assert [r["step"] for r in rows if "eval" in r] == [6, 12]
    assert (run / "loss.png").stat().st_size > 1000


def test_a_time_budget_alone_runs_epoch_after_epoch_until_the_deadline(cli, tmp_path, tiny_corpus, wordpiece_dir):
    from tests.helpers import pretrain_args

    lines = tiny_corpus.read_text().split("\n\n")[0].splitlines()[:4]
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join("\n".join(lines) for _ in range(6)) + "\n")
    out = tmp_path / "bert"
    result = cli(*pretrain_args(small, wordpiece_dir, out, "--max-time", "3s", "--set", "train.log_every=5"))
    assert result.code == 0, result.text
    assert "stopped by: max_time" in result.out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in rows) > 2  # many passes over the small corpus, not one
    assert len([r for r in rows if "eval" in r]) >= 3  # evaluations spread over the time budget
