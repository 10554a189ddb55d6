"""Scale-out on the engine the field uses: two CPU processes under torchrun (gloo), one writer, sharded data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import pretrain_args

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found next to the interpreter")
def test_two_process_ddp_pretraining(tmp_path, tiny_corpus, wordpiece_dir):
    out = tmp_path / "ddp"
    args = pretrain_args(tiny_corpus, wordpiece_dir, out, "--max-steps", "6", "--set", "train.log_every=2")
    proc = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "-m", "lmforge", "-q", *args],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run: ") == 1  # only the main process reports
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [2, 4, 6]  # one writer: no duplicated lines
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "lmforge", "-q", *pretrain_args(tiny_corpus, wordpiece_dir, single,
                    "--max-steps", "6", "--set", "train.log_every=2")], check=True, timeout=300)
    epochs = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1]["epoch"]
    assert epochs(out) == pytest.approx(2 * epochs(single), rel=0.02)  # each step consumed a batch per process
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found next to the interpreter")
def test_two_process_ddp_time_budget(tmp_path, tiny_corpus, wordpiece_dir):
    # a time-only budget under DDP: both ranks stop at the deadline and evaluate by the clock (the per-step agreement
    # between ranks is exercised here, though two ranks on one machine rarely disagree on their own)
    out = tmp_path / "ddp-time"
    args = pretrain_args(tiny_corpus, wordpiece_dir, out, "--max-time", "12s")  # set-up counts: ~5 s of it
    proc = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "-m", "lmforge", *args],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped by: max_time" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in rows if "eval" in r]
    assert len(evals) >= 2 and evals == sorted(set(evals))  # evaluations by the clock, once each, in order
