"""THE training loop: one loop for pretraining and every fine-tuning task.

Tasks supply a :class:`TaskSpec` (a model whose forward takes the batch and returns an output with ``.loss``, a
deterministic batch source, an evaluation function and a way to save the model). Here, :func:`optimizer_steps` is a
generator that runs micro-batches and yields after each optimizer step and at each epoch end; :func:`train` is the
driver around it: a :class:`~lmforge.training.budget.Budget` says when to stop and evaluate, and the driver logs,
evaluates, keeps the best model and writes checkpoints. It runs on ``accelerate``: plain ``python``/``lmforge`` on CPU
or one GPU, and DDP when started by ``accelerate launch`` or ``torchrun`` (each rank takes every world-size-th batch).

Determinism: a batch is a pure function of (seed, epoch, index) and the loader gets its own generator, so the global
RNG is consumed only by the model (dropout); checkpoints carry it. On CPU a resumed run's per-step losses equal the
uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lmforge.config import TrainConfig
from lmforge.errors import DataError
from lmforge.rundir import RunDir
from lmforge.training import checkpoint as ckpt
from lmforge.training.budget import Budget
from lmforge.training.logging import MetricsLog, Progress
from lmforge.training.schedule import Schedule

log = logging.getLogger("lmforge")


class BatchSource(Protocol):
    """Deterministic batches: ``batch(epoch, i)`` is the same tensors every time it is asked for."""

    def num_batches(self, epoch: int) -> int: ...

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]: ...


@dataclass
class TaskSpec:
    """What a task hands the loop."""

    name: str
    model: torch.nn.Module
    train_data: BatchSource
    save_model: Callable[[torch.nn.Module, Path], None]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    best_metric: str | None = None  # key of the evaluate() dict; None keeps the last model
    greater_is_better: bool = True
    count_tokens: Callable[[dict], int] | None = None
    count_examples: Callable[[dict], int] = lambda b: int(next(iter(b.values())).shape[0])
    eval_times: int | None = None  # with no eval_every: evaluate this many times per run (else at epoch ends)
    eval_size: int = 0  # examples one evaluation scores (to budget its time before it was ever timed)
    baseline: dict[str, float] = field(default_factory=dict)  # dev metric (higher is better) -> a trivial model's
    on_step: Callable[[int, int], None] | None = None  # (step, tokens in the step) after each optimizer step


@dataclass
class TrainResult:
    steps: int
    epochs: float
    elapsed: float
    stopped_by: str
    last_eval: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # seconds: setup, training, evaluation, saving
    warnings: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def mixed_precision(precision: str) -> str:
    if precision == "fp32":
        return "no"
    if precision == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if torch.cuda.is_available() else "no"
    return precision


def make_accelerator(precision: str):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision(precision), cpu=not torch.cuda.is_available())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _BatchDataset(torch.utils.data.Dataset):
    """This rank's batches of one epoch, from ``start`` on (batch ``i`` of rank r is global batch i*world + r)."""

    def __init__(self, source: BatchSource, epoch: int, start: int, count: int, rank: int, world: int) -> None:
        self.source, self.epoch, self.start, self.count, self.rank, self.world = source, epoch, start, count, rank, world

    def __len__(self) -> int:
        return self.count - self.start

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.source.batch(self.epoch, (self.start + i) * self.world + self.rank)


def _save_model_atomic(save: Callable[[torch.nn.Module, Path], None], model: torch.nn.Module, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save(model, tmp)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _improved(value: float, best: float | None, greater: bool) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if greater else value < best


# ------------------------------------------------------------------------------------------------ the session
@dataclass
class Position:
    """Where the run is: what a checkpoint records and a resume restores."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch already consumed (this rank)
    elapsed: float = 0.0  # seconds of earlier sessions of this run
    best: dict[str, Any] = field(default_factory=dict)


class Session:
    """The accelerator, the prepared model and optimizer, and the epoch geometry of one training process."""

    def __init__(self, task: TaskSpec, cfg: TrainConfig) -> None:
        if cfg.lr is None:
            raise ValueError(f"{task.name}: the task must resolve the learning rate before training")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.task, self.cfg = task, cfg
        self.accelerator = make_accelerator(cfg.precision)
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.device = self.accelerator.device
        self.raw_model = task.model
        optimizer = torch.optim.AdamW(
            _param_groups(self.raw_model, cfg.weight_decay), lr=cfg.lr,
            fused=self.device.type in ("cuda", "cpu"),  # one fused kernel instead of a loop over parameters
        )
        self.model, self.optimizer = self.accelerator.prepare(self.raw_model, optimizer)
        if cfg.compile if cfg.compile is not None else self.device.type == "cuda":
            self.model = torch.compile(self.model)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        # whole optimizer steps per epoch: an epoch never ends half-way through gradient accumulation, so epoch-end
        # evaluations and checkpoints always fall on a step boundary
        batches = task.train_data.num_batches(0)
        self.micro_per_epoch = batches // self.world // cfg.grad_accum * cfg.grad_accum
        if self.micro_per_epoch < 1:
            raise DataError(
                f"the training data gives {batches} batch(es) of {cfg.batch_size}: too few for {self.world} "
                f"process(es) x {cfg.grad_accum} accumulation step(s)",
                fix="add data, or lower --batch-size / train.grad_accum / the number of processes",
            )
        self.steps_per_epoch = self.micro_per_epoch // cfg.grad_accum
        self.parameters = sum(p.numel() for p in self.raw_model.parameters())

    def epoch_float(self, at: Position) -> float:
        return round(at.epoch + at.batch / self.micro_per_epoch, 4)

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Every rank must take the same branch, or they would wait on each other: one collective for all flags."""
        if self.world == 1:
            return flags
        summed = self.accelerator.reduce(torch.tensor([float(f) for f in flags], device=self.device), reduction="sum")
        return tuple(x > 0 for x in summed.tolist())

    def set_lr(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor


class _Window:
    """Loss and throughput between two log lines; evaluation and checkpoint time is left out of the rates."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)  # summed on the device: no host sync per step
        self.steps = self.tokens = self.examples = 0
        self.started = time.monotonic()

    def pause(self, seconds: float) -> None:
        self.started += seconds


def optimizer_steps(session: Session, at: Position, window: _Window,
                    schedule_factor: Callable[[int], float]) -> Iterator[bool]:
    """Train from ``at`` on, updating it in place; yield ``False`` after each optimizer step and ``True`` when an
    epoch has run out (``at`` then points at the next epoch's start). Runs until the caller stops asking."""
    task, cfg, accelerator = session.task, session.cfg, session.accelerator
    workers = cfg.workers if cfg.workers is not None else (4 if session.device.type == "cuda" else 0)
    micro = 0
    step_tokens = 0
    while True:
        dataset = _BatchDataset(task.train_data, at.epoch, at.batch, session.micro_per_epoch, session.rank,
                                session.world)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=workers,
            generator=torch.Generator().manual_seed(cfg.seed + at.epoch),
            pin_memory=session.device.type == "cuda", persistent_workers=False,
        )
        for batch in loader:
            at.batch += 1
            micro += 1
            tokens = task.count_tokens(batch) if task.count_tokens else 0  # on CPU tensors: no device sync
            window.tokens += tokens
            step_tokens += tokens
            window.examples += task.count_examples(batch)
            batch = {k: v.to(session.device, non_blocking=True) for k, v in batch.items()}
            sync = micro % cfg.grad_accum == 0
            no_sync = accelerator.no_sync(session.model) if (not sync and session.world > 1) else contextlib.nullcontext()
            with no_sync:
                with accelerator.autocast():
                    loss = session.model(**batch).loss / cfg.grad_accum
                accelerator.backward(loss)
            window.loss += loss.detach()
            if not sync:
                continue
            if cfg.clip_grad:
                accelerator.clip_grad_norm_(session.model.parameters(), cfg.clip_grad)
            session.set_lr(schedule_factor(at.step))
            session.optimizer.step()
            session.optimizer.zero_grad(set_to_none=True)
            at.step += 1
            window.steps += 1
            if task.on_step:
                task.on_step(at.step, step_tokens)
            step_tokens = 0
            yield False
        at.epoch, at.batch = at.epoch + 1, 0
        yield True


# ------------------------------------------------------------------------------------------------ the driver
class _Driver:
    """Logging, evaluation, best-model selection and checkpoints around :func:`optimizer_steps`."""

    def __init__(self, session: Session, run: RunDir, at: Position, budget: Budget, schedule: Schedule,
                 show_progress: bool) -> None:
        self.session, self.run, self.at, self.budget, self.schedule = session, run, at, budget, schedule
        self.task, self.cfg = session.task, session.cfg
        self.metrics = MetricsLog(run.metrics_path, enabled=session.main)
        self.progress = Progress(budget.total_steps, at.step, enabled=session.main and show_progress,
                                 description=self.task.name)
        self.window = _Window(session.device)
        self.last_eval: dict[str, float] = {}
        self.evaluated_at = self.saved_at = -1
        self.session_start_step = at.step
        self.spent = {"evaluation": 0.0, "saving": 0.0}
        self.at.best = at.best or {"metric": self.task.best_metric, "value": None, "step": None}

    @property
    def evaluates(self) -> bool:
        return self.task.evaluate is not None

    def lr_factor(self, step: int) -> float:
        return self.schedule.factor(step, self.budget.time_progress(self.evaluates))

    def _timed(self, kind: str, work: Callable[[], None]) -> None:
        started = time.monotonic()
        work()
        seconds = time.monotonic() - started
        self.budget.measure(kind, seconds)
        self.spent["evaluation" if kind == "eval" else "saving"] += seconds
        self.window.pause(seconds)  # evaluations and checkpoints do not count against throughput

    def log_step(self, force: bool = False) -> None:
        at, window, budget = self.at, self.window, self.budget
        if window.steps == 0 or (at.step % self.cfg.log_every and at.step != budget.total_steps and not force):
            return
        span = max(1e-9, time.monotonic() - window.started)
        world = self.session.world
        record = {"step": at.step, "epoch": self.session.epoch_float(at),
                  "loss": float(window.loss.item()) / max(1, window.steps),
                  "lr": self.session.optimizer.param_groups[0]["lr"],
                  "examples_per_s": window.examples * world / span, "elapsed_s": round(budget.elapsed(), 3)}
        if self.task.count_tokens:
            record["tokens_per_s"] = window.tokens * world / span
        self.metrics.write(record)
        self.progress.update(at.step, {"loss": record["loss"], "tok/s": round(record.get("tokens_per_s", 0)) or None,
                                       "ex/s": round(record["examples_per_s"], 1)}, self.eta())
        window.reset()

    def eta(self) -> float | None:
        budget, done = self.budget, self.at.step - self.session_start_step
        rate = done / max(1e-9, budget.elapsed() - budget.elapsed_before)
        eta = (budget.total_steps - self.at.step) / rate if rate > 0 and budget.total_steps else None
        if budget.max_time:
            eta = min(eta or budget.max_time, max(0.0, budget.max_time - budget.elapsed()))
        return eta

    def evaluate(self) -> None:
        self.evaluated_at = self.at.step
        if not self.evaluates:
            return
        self._timed("eval", self._evaluate)

    def _evaluate(self) -> None:
        session, task, best = self.session, self.task, self.at.best
        if session.main:
            model = session.raw_model
            model.eval()
            with torch.no_grad(), session.accelerator.autocast():
                self.last_eval = {k: float(v) for k, v in task.evaluate(model).items()}
            model.train()
            self.metrics.write({"step": self.at.step, "epoch": session.epoch_float(self.at),
                                "elapsed_s": round(self.budget.elapsed(), 3), "eval": self.last_eval})
            log.info("eval at step %d: %s", self.at.step, "  ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items()))
            if task.best_metric and _improved(self.last_eval[task.best_metric], best["value"], task.greater_is_better):
                best.update(value=self.last_eval[task.best_metric], step=self.at.step)
                self._timed("model", lambda: _save_model_atomic(task.save_model, model, self.run.model_dir))
        session.accelerator.wait_for_everyone()

    def checkpoint(self) -> None:
        self.saved_at = self.at.step
        self._timed("checkpoint", self._checkpoint)

    def _checkpoint(self) -> None:
        session, at = self.session, self.at
        if session.main:
            state = {"epoch": at.epoch, "position": at.batch, "elapsed": self.budget.elapsed(), "best": at.best,
                     "world_size": session.world}
            ckpt.save_checkpoint(self.run.checkpoints_dir, at.step, session.raw_model, session.optimizer, state,
                                 self.cfg.keep_checkpoints)
        session.accelerator.wait_for_everyone()

    def after_step(self, epoch_ended: bool) -> bool:
        """Log, evaluate and checkpoint as the budget says; True when the run is over."""
        budget, at = self.budget, self.at
        if not epoch_ended:
            window = self.window
            span = time.monotonic() - window.started
            if span > 0 and window.examples:  # the training speed so far, for the budget's estimates
                budget.train_examples_per_s = window.examples * self.session.world / span
            self.log_step()
        out_of_time, eval_due = self.session.agree(budget.out_of_time(self.evaluates),
                                                   budget.eval_due(at.step, epoch_ended, self.evaluates))
        if out_of_time:
            budget.stopped_by = "max_time"
            self.log_step(force=True)  # the last step's line, whatever the log interval
            return True
        if budget.steps_done(at.step):
            return True
        if eval_due and self.evaluated_at != at.step:
            self.evaluate()
            if self.cfg.save_every is None:
                self.checkpoint()
        if self.cfg.save_every and at.step % self.cfg.save_every == 0 and self.saved_at != at.step:
            self.checkpoint()
        return False

    def finish(self) -> None:
        self.progress.close()
        if self.evaluated_at != self.at.step:
            self.evaluate()
        if self.saved_at != self.at.step:
            self.checkpoint()
        best = self.at.best
        if self.session.main and (self.task.best_metric is None or not self.evaluates or best["value"] is None):
            self._timed("model", lambda: _save_model_atomic(self.task.save_model, self.session.raw_model,
                                                            self.run.model_dir))
        self.session.accelerator.wait_for_everyone()


def _restore(session: Session, run: RunDir, metrics: MetricsLog) -> Position:
    """The newest checkpoint that verifies and loads (model, optimizer and RNG restored), or the start. Torn
    checkpoints are skipped with a warning; an altered or unsafe one stops the run with a CheckpointError."""
    if session.main:
        ckpt.remove_incomplete(run.checkpoints_dir)
    session.accelerator.wait_for_everyone()
    found = ckpt.resume_point(run.checkpoints_dir, session.raw_model, session.optimizer)
    if found is None:
        log.warning("no usable checkpoint in %s: starting from the beginning", run.checkpoints_dir)
        metrics.truncate_after(0)
        return Position()
    state, path = found
    at = Position(state["step"], state["epoch"], state["position"], state.get("elapsed", 0.0), state.get("best") or {})
    metrics.truncate_after(at.step)
    log.info("resumed from %s (step %d)", path, at.step)
    return at


def train(task: TaskSpec, cfg: TrainConfig, run: RunDir, *, resume: bool = False, show_progress: bool = True,
          started: float | None = None) -> TrainResult:
    """Train ``task`` within ``cfg``'s budget. ``started`` (a ``time.monotonic()`` value) is when the stage began:
    a time budget counts from there, set-up included."""
    started = time.monotonic() if started is None else started
    session = Session(task, cfg)
    at = _restore(session, run, MetricsLog(run.metrics_path, enabled=session.main)) if resume else Position()
    setup = time.monotonic() - started
    budget = Budget(cfg, steps_per_epoch=session.steps_per_epoch, eval_times=task.eval_times,
                    eval_size=task.eval_size, parameters=session.parameters, started=started, elapsed_before=at.elapsed)
    schedule = Schedule.create(cfg.schedule, budget.total_steps or 10**12, cfg.warmup)
    driver = _Driver(session, run, at, budget, schedule, show_progress)
    session.raw_model.train()
    try:
        if not budget.steps_done(at.step):
            for epoch_ended in optimizer_steps(session, at, driver.window, driver.lr_factor):
                if driver.after_step(epoch_ended):
                    break
    except KeyboardInterrupt:
        driver.progress.close()
        log.warning("interrupted at step %d: writing a checkpoint; continue with --resume", at.step)
        driver.checkpoint()
        raise
    driver.finish()
    timing = {"setup": round(setup, 1), **{k: round(v, 1) for k, v in driver.spent.items()}}
    timing["training"] = round(budget.elapsed() - at.elapsed - sum(timing.values()), 1)
    result = TrainResult(at.step, session.epoch_float(at), budget.elapsed(), budget.stopped_by, driver.last_eval,
                         at.best, timing)
    result.warnings = _below_baseline(task, result)
    return result


def _below_baseline(task: TaskSpec, result: TrainResult) -> list[str]:
    """A run whose dev metric does not beat what a trivial model gets learned nothing useful: say so. (Baselines are
    for metrics where higher is better.)"""
    warnings = []
    for metric, trivial in task.baseline.items():
        value = result.best.get("value") if result.best.get("metric") == metric else result.last_eval.get(metric)
        if value is not None and not _improved(value, trivial, greater=True):
            warnings.append(f"the dev {metric} ({value:.4f}) does not beat the majority-class baseline "
                            f"({trivial:.4f}): the model has not learned the task yet; train longer "
                            "(--epochs, --max-time), or check the data and the learning rate")
    return warnings
