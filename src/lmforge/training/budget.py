"""When a run stops and when it evaluates: a step, epoch or wall-time budget, whichever ends first.

A time budget (``--max-time``) is honest: it covers the whole stage from the moment it started (loading, tokenizing,
training, every evaluation and checkpoint, the final ones included). Training stops early enough for the final
evaluation and checkpoint to fit; their cost is measured as the run goes: a run evaluates once after a tenth of its
time (before that, the cost is guessed from the training speed). Evaluations under a time budget are spaced in time
from the end of the previous one and, all together, take at most a fifth of it, so a slow evaluation can never
crowd out training.
"""

from __future__ import annotations

import math
import time

from lmforge.config import TrainConfig

# before an evaluation was ever timed, its cost per example is guessed from the training speed (a no-grad example
# cost 0.27x a training step's example with MiniLM on 2 CPU cores); a time budget times a real evaluation early on
EVAL_COST_PER_TRAIN_EXAMPLE = 0.35
CALIBRATE_AT = 0.1  # share of a time budget after which a run that has not evaluated yet does so
# before the first checkpoint is timed: weights + two AdamW moments in fp32, written at this many bytes/s
ASSUMED_WRITE_BYTES_PER_S = 200e6
# under a time budget, evaluations (the final one included) may take at most this share of it: on a slow machine a
# big held-out set is scored less often, never instead of training
MAX_EVAL_SHARE = 0.2
FINISH_SECONDS = 0.6  # the loss plot (0.44 s measured with matplotlib's first import) and the run summary


class Budget:
    def __init__(self, cfg: TrainConfig, *, steps_per_epoch: int, eval_times: int | None, eval_size: int,
                 parameters: int, started: float | None = None, elapsed_before: float = 0.0) -> None:
        self.max_time = cfg.max_time
        self.started = time.monotonic() if started is None else started
        self.elapsed_before = elapsed_before
        if cfg.max_steps:
            self.total_steps: int | None = cfg.max_steps
        elif cfg.epochs:
            self.total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        elif cfg.max_time:
            self.total_steps = None  # a time budget alone: epoch after epoch until the time is up
        else:
            self.total_steps = steps_per_epoch
        self.stopped_by = "max_steps" if cfg.max_steps else "epochs" if self.total_steps else "max_time"
        # evaluations: every N steps; else N times per run (spread over the steps and, under a time budget, over the
        # time, whichever comes first); else at epoch ends
        self.eval_every = cfg.eval_every
        self.eval_interval: float | None = None
        if self.eval_every is None and eval_times:
            if self.total_steps:
                self.eval_every = max(1, self.total_steps // eval_times)
            if self.max_time:
                self.eval_interval = self.max_time / eval_times
        self.next_eval_at = (self.elapsed() + self.eval_interval) if self.eval_interval else None
        self.eval_size = eval_size
        self.measured: dict[str, float] = {}  # seconds of the last evaluation / model save / checkpoint
        self.eval_spent = 0.0  # seconds spent evaluating so far (this session)
        self.parameters = parameters
        self.train_examples_per_s: float | None = None

    # ------------------------------------------------------------------------------------------------ clock
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def cost(self, kind: str) -> float:
        """Seconds an evaluation / model save / checkpoint takes: measured, else estimated."""
        if kind in self.measured:
            return self.measured[kind]
        if kind == "eval":
            rate = self.train_examples_per_s
            return self.eval_size / rate * EVAL_COST_PER_TRAIN_EXAMPLE if rate and self.eval_size else 0.0
        write = self.parameters * 4 * (3 if kind == "checkpoint" else 1)
        return write / ASSUMED_WRITE_BYTES_PER_S

    def measure(self, kind: str, seconds: float) -> None:
        self.measured[kind] = seconds
        if kind == "eval":
            self.eval_spent += seconds
            if self.eval_interval:
                self.next_eval_at = self.elapsed() + self.eval_interval

    def reserve(self, evaluates: bool) -> float:
        """Seconds the end of the run needs after the last step: final evaluation, model, checkpoint, summary."""
        end = self.cost("checkpoint") + self.cost("model") + FINISH_SECONDS
        return end + (self.cost("eval") if evaluates else 0.0)

    def time_progress(self, evaluates: bool) -> float:
        """Share of the training time used (0 without a time budget): what the LR schedule follows."""
        if not self.max_time:
            return 0.0
        return min(1.0, self.elapsed() / max(1e-9, self.max_time - self.reserve(evaluates)))

    # ------------------------------------------------------------------------------------------------ decisions
    def steps_done(self, step: int) -> bool:
        return self.total_steps is not None and step >= self.total_steps

    def out_of_time(self, evaluates: bool) -> bool:
        return bool(self.max_time) and self.elapsed() + self.reserve(evaluates) >= self.max_time

    def eval_due(self, step: int, epoch_ended: bool, evaluates: bool) -> bool:
        """Evaluate now? Never right before the end (the final evaluation follows anyway)."""
        if self.steps_done(step):
            return False
        if self.max_time and evaluates:
            if "eval" not in self.measured:
                # time one early, so that the end of the run is planned with a real evaluation's cost (if it and
                # the final one fit)
                return (self.elapsed() >= CALIBRATE_AT * self.max_time
                        and self.elapsed() + self.cost("eval") + self.reserve(evaluates) < self.max_time)
            # this evaluation and the final one must fit in the evaluations' share of the time
            if self.eval_spent + 2 * self.cost("eval") > MAX_EVAL_SHARE * self.max_time:
                return False
            # and leave training time before the final one
            left = self.max_time - self.elapsed() - self.cost("eval") - self.reserve(evaluates)
            if left < (self.eval_interval or self.max_time / 10) / 2:
                return False  # too close to the deadline: the final evaluation is coming
        if self.eval_every is None and self.next_eval_at is None:
            return epoch_ended
        by_steps = bool(self.eval_every) and step % self.eval_every == 0
        by_time = self.next_eval_at is not None and self.elapsed() >= self.next_eval_at
        return by_steps or by_time
