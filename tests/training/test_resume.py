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
    from lmforge.tasks import classify
    from lmforge.tasks.classify import FinetuneClassifyConfig

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


# ------------------------------------------------------------------------------------------------ damaged checkpoints
# checkpoints at steps 4, 8 and 12 of a 12-step run; each test damages a copy and resumes it through the CLI
DAMAGE_RUN = ("--max-steps", "12", "--set", "train.save_every=4", "--set", "train.log_every=1",
              "--set", "train.keep_checkpoints=3")


@pytest.fixture(scope="module")
def checkpointed_run(tiny_corpus, wordpiece_dir, tmp_path_factory) -> Path:
    from lmforge.cli import main

    out = tmp_path_factory.mktemp("runs") / "checkpointed"
    with pytest.raises(SystemExit) as done:
        main(["-q", *pretrain_args(tiny_corpus, wordpiece_dir, out, *DAMAGE_RUN)])
    assert done.value.code == 0
    assert [step for step, _ in ckpt.complete_checkpoints(out / "checkpoints")] == [4, 8, 12]
    return out


def _damaged_copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _flat(text: str) -> str:
    """Log lines as one string without whitespace: the console wraps long paths wherever it likes."""
    return "".join(text.split())


@pytest.mark.parametrize("damage", ["truncated model.safetensors", "invalid trainer_state.json"])
def test_resume_skips_a_torn_newest_checkpoint(cli, checkpointed_run, tmp_path, tiny_corpus, wordpiece_dir, damage):
    run = _damaged_copy(checkpointed_run, tmp_path)
    newest = run / "checkpoints" / "step-000012"
    if damage == "truncated model.safetensors":
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        (newest / "trainer_state.json").write_text('{"epoch": 0, "posi', encoding="utf-8")

    result = cli(*pretrain_args(tiny_corpus, wordpiece_dir, run, *DAMAGE_RUN, "--resume"))
    assert result.code == 0, result.text
    log = _flat(result.err)
    assert f"skippingcheckpoint{newest}:{damage.split()[-1]}" in log  # names the checkpoint and the file
    assert f"resumedfrom{run / 'checkpoints' / 'step-000008'}(step8)" in log
    assert "Traceback" not in result.text
    # steps 9-12 trained again from step 8's state: the same losses as the undamaged run, each step logged once
    assert losses(run) == losses(checkpointed_run)
    assert [s for s, _ in losses(run)] == list(range(1, 13))
    assert [step for step, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [4, 8, 12]
    _assert_sealed(newest)  # step 12 written again, whole


def _assert_sealed(path: Path) -> None:
    import json
    import zlib

    marker = json.loads((path / ckpt.COMPLETE).read_text())
    for name in ckpt.FILES:
        data = (path / name).read_bytes()
        assert marker["files"][name] == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}


def test_resume_starts_over_when_no_checkpoint_verifies(cli, checkpointed_run, tmp_path, tiny_corpus, wordpiece_dir):
    run = _damaged_copy(checkpointed_run, tmp_path)
    for _, path in ckpt.complete_checkpoints(run / "checkpoints"):
        (path / "rng.safetensors").unlink()

    result = cli(*pretrain_args(tiny_corpus, wordpiece_dir, run, *DAMAGE_RUN, "--resume"))
    assert result.code == 0, result.text
    log = _flat(result.err)
    assert all(f"skippingcheckpoint{run / 'checkpoints' / f'step-{s:06d}'}:rng.safetensors" in log for s in (4, 8, 12))
    assert "startingfromthebeginning" in log
    assert losses(run) == losses(checkpointed_run)


def test_resume_refuses_a_poisoned_optimizer_file(cli, checkpointed_run, tmp_path, tiny_corpus, wordpiece_dir):
    """A pickle in place of the optimizer state, its size written into the marker: exit 2 and a message, no load."""
    import json
    import pickle

    run = _damaged_copy(checkpointed_run, tmp_path)
    newest = run / "checkpoints" / "step-000012"
    poison = pickle.dumps({"harmless": ["but", "not", "tensors"], "at": (1, 2)})
    (newest / "optimizer.pt").write_bytes(poison)
    marker = json.loads((newest / ckpt.COMPLETE).read_text())
    marker["files"]["optimizer.pt"]["size"] = len(poison)
    (newest / ckpt.COMPLETE).write_text(json.dumps(marker))
    metrics_before = (run / "metrics.jsonl").read_text()

    result = cli(*pretrain_args(tiny_corpus, wordpiece_dir, run, *DAMAGE_RUN, "--resume"))
    assert result.code == 2, result.text
    assert "Traceback" not in result.text
    message = _flat(result.err)
    assert f"{newest / 'optimizer.pt'}:" in message  # which file
    assert "optimizer.pthasitsrecordedsize" in message  # what is wrong
    assert f"fix:deletethefolder{newest}" in message and "--overwrite" in message  # how to fix it
    # refused, not skipped: the run dir is as it was
    assert (run / "metrics.jsonl").read_text() == metrics_before
    assert [step for step, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [4, 8, 12]

