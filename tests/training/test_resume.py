"""Checkpoints and resume: a run killed mid-way and resumed logs the same per-step losses as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.training import checkpoint as ckpt
from tests.helpers import losses, pretrain_args

STEPS = "60"
COMMON = ("--max-steps", STEPS, "--set", "train.save_every=5", "--set", "train.log_every=1",
          "--set", "train.keep_checkpoints=3")


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "lmforge", "-q", *args], check=True, env=_env(), timeout=300)


def test_killed_run_resumes_with_identical_losses(tmp_path, tiny_corpus, wordpiece_dir):
    reference = tmp_path / "reference"
    _run(pretrain_args(tiny_corpus, wordpiece_dir, reference, *COMMON))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "-q",
                             *pretrain_args(tiny_corpus, wordpiece_dir, killed, *COMMON)], env=_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        found = ckpt.complete_checkpoints(killed / "checkpoints")
        if found and found[-1][0] >= 15:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last_complete = ckpt.complete_checkpoints(killed / "checkpoints")[-1][0]
    assert 15 <= last_complete < int(STEPS)
    # a checkpoint that was being written when the process died is ignored
    (killed / "checkpoints" / "step-000999").mkdir()
    (killed / "checkpoints" / ".tmp-step-001000-123").mkdir()

    _run(pretrain_args(tiny_corpus, wordpiece_dir, killed, *COMMON, "--resume"))
    assert losses(killed) == losses(reference)
    assert [s for s, _ in losses(killed)] == list(range(1, int(STEPS) + 1))
    kept = [step for step, _ in ckpt.complete_checkpoints(killed / "checkpoints")]
    assert kept == [50, 55, 60]  # keep_checkpoints=3, incomplete leftovers removed
    assert not (killed / "checkpoints" / "step-000999").exists()


def test_interrupt_writes_a_checkpoint_and_resume_matches(tmp_path, sentiment_files, tiny_bert_dir, monkeypatch):
    """Ctrl-C mid-epoch: the loop writes a checkpoint at the last finished step; resume continues mid-epoch."""
    from lmforge.config import FinetuneClassifyConfig
    from lmforge.tasks import classify

    def config(out: Path, resume: bool = False) -> FinetuneClassifyConfig:
        return FinetuneClassifyConfig.model_validate({
            "model": str(tiny_bert_dir), "data": str(sentiment_files["train"]), "eval": str(sentiment_files["dev"]),
            "out": str(out), "resume": resume,
            "train": {"max_steps": 20, "batch_size": 16, "lr": 1e-3, "log_every": 1, "threads": 1},
        })

    classify.finetune_classify(config(tmp_path / "ref"), show_progress=False)

    original = classify.ClassificationBatches.batch
    calls = {"n": 0}

    def flaky(self, epoch, index):
        calls["n"] += 1
        if calls["n"] == 19:  # 15 steps per epoch: this is in the second epoch
            raise KeyboardInterrupt
        return original(self, epoch, index)

    monkeypatch.setattr(classify.ClassificationBatches, "batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        classify.finetune_classify(config(tmp_path / "cut"), show_progress=False)
    monkeypatch.setattr(classify.ClassificationBatches, "batch", original)
    assert ckpt.latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step-000018"
    classify.finetune_classify(config(tmp_path / "cut", resume=True), show_progress=False)
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")
