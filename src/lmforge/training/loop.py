"""THE training loop: one loop for pretraining and every fine-tuning task.

Tasks supply a :class:`TaskSpec` (a model whose forward takes the batch and returns an output with ``.loss``, a
deterministic batch source, an evaluation function and a way to save the model); the loop owns stepping, mixed
precision, gradient accumulation and clipping, the LR schedule, budgets, logging, evaluation, best-model
selection, checkpoints and resume. It runs on ``accelerate``: plain ``python``/``lmforge`` on CPU or one GPU, and DDP
when started by ``accelerate launch`` or ``torchrun`` (each rank takes every world-size-th batch).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lmforge.config import TrainConfig
from lmforge.rundir import RunDir
from lmforge.training import checkpoint as ckpt
from lmforge.training.logging import MetricsLog, Progress
from lmforge.training.schedule import Schedule

log = logging.getLogger("lmforge")


class BatchSource(Protocol):
    """Deterministic batches: ``batch(epoch, i)`` is the same tensors every time it is asked for."""

    def num_batches(self, epoch: int) -> int: ...

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]: ...


@dataclass
class TaskSpec:
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
    on_step: Callable[[int, int], None] | None = None  # (step, tokens in the step) after each optimizer step


@dataclass
class TrainResult:
    steps: int
    epochs: float
    elapsed: float
    stopped_by: str
    last_eval: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def configure_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


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


def train(task: TaskSpec, cfg: TrainConfig, run: RunDir, *, resume: bool = False, show_progress: bool = True) -> TrainResult:
    configure_threads(cfg.threads)
    accelerator = make_accelerator(cfg.precision)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    device = accelerator.device

    raw_model = task.model
    optimizer = torch.optim.AdamW(
        _param_groups(raw_model, cfg.weight_decay),
        lr=cfg.lr or 5e-5,
        fused=device.type in ("cuda", "cpu"),  # one fused kernel instead of a loop over parameters
    )
    model, optimizer = accelerator.prepare(raw_model, optimizer)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    if use_compile:
        model = torch.compile(model)

    # whole optimizer steps per epoch: an epoch never ends half-way through gradient accumulation, so epoch-end
    # evaluations and checkpoints always fall on a step boundary
    micro_per_epoch = task.train_data.num_batches(0) // world // cfg.grad_accum * cfg.grad_accum
    if micro_per_epoch < 1:
        from lmforge.errors import DataError

        raise DataError(
            f"the training data gives {task.train_data.num_batches(0)} batch(es) of {cfg.batch_size}: too few for "
            f"{world} process(es) x {cfg.grad_accum} accumulation step(s)",
            fix="add data, or lower --batch-size / train.grad_accum / the number of processes",
        )
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    # budgets: steps, epochs or wall time (whichever ends first); with only a time budget the run goes on, epoch
    # after epoch, until the time is up, and the schedule follows the clock
    if cfg.max_steps:
        total_steps: int | None = cfg.max_steps
    elif cfg.epochs:
        total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    elif cfg.max_time:
        total_steps = None
    else:
        total_steps = steps_per_epoch
    schedule = Schedule.create(cfg.schedule, total_steps or 10**12, cfg.warmup, cfg.max_time)
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    metrics = MetricsLog(run.metrics_path, enabled=main)
    step, epoch, position, elapsed_before = 0, 0, 0, 0.0
    best: dict[str, Any] = {"metric": task.best_metric, "value": None, "step": None}
    if resume:
        if main:
            ckpt.remove_incomplete(run.checkpoints_dir)
        accelerator.wait_for_everyone()
        latest = ckpt.latest_checkpoint(run.checkpoints_dir)
        if latest is None:
            log.warning("no complete checkpoint in %s: starting from the beginning", run.checkpoints_dir)
            metrics.truncate_after(0)
        else:
            state = ckpt.load_checkpoint(latest, raw_model, optimizer)
            step, epoch, position = state["step"], state["epoch"], state["position"]
            elapsed_before = state.get("elapsed", 0.0)
            best = state.get("best", best)
            metrics.truncate_after(step)
            log.info("resumed from %s (step %d)", latest, step)

    eval_every = cfg.eval_every
    save_every = cfg.save_every
    eval_interval = None  # seconds between evaluations, for time-only budgets
    if eval_every is None and task.eval_times:
        if total_steps:
            eval_every = max(1, total_steps // task.eval_times)
        else:
            eval_interval = cfg.max_time / task.eval_times
    last_eval: dict[str, float] = {}
    evaluated_at = -1
    saved_at = -1

    def run_eval() -> None:
        nonlocal last_eval, evaluated_at
        evaluated_at = step
        if task.evaluate is None:
            return
        if main:
            raw_model.eval()
            with torch.no_grad(), accelerator.autocast():
                last_eval = {k: float(v) for k, v in task.evaluate(raw_model).items()}
            raw_model.train()
            metrics.write({"step": step, "epoch": round(epoch + position / micro_per_epoch, 4), "eval": last_eval})
            log.info("eval at step %d: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
            if task.best_metric and _improved(last_eval[task.best_metric], best["value"], task.greater_is_better):
                best.update(value=last_eval[task.best_metric], step=step)
                _save_model_atomic(task.save_model, raw_model, run.model_dir)
        accelerator.wait_for_everyone()

    def save_checkpoint() -> None:
        nonlocal saved_at
        saved_at = step
        if main:
            state = {"epoch": epoch, "position": position, "elapsed": elapsed(), "best": best,
                     "schedule": schedule.state_dict(), "world_size": world}
            ckpt.save_checkpoint(run.checkpoints_dir, step, raw_model, optimizer, state, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    start_time = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - start_time

    progress = Progress(total_steps, step, enabled=main and show_progress, description=task.name)
    raw_model.train()
    window = {"loss": torch.zeros((), device=device), "n": 0, "tokens": 0, "examples": 0, "t": time.monotonic()}
    stopped_by = "max_steps" if cfg.max_steps else "epochs" if total_steps else "max_time"
    micro = 0
    step_tokens = 0
    progress_start = step
    done = total_steps is not None and step >= total_steps
    next_eval = (elapsed_before // eval_interval + 1) * eval_interval if eval_interval else None
    try:
        while not done:
            dataset = _BatchDataset(task.train_data, epoch, position, micro_per_epoch, rank, world)
            generator = torch.Generator().manual_seed(cfg.seed + epoch)
            workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=None, shuffle=False, num_workers=workers, generator=generator,
                pin_memory=device.type == "cuda", persistent_workers=False,
            )
            for batch in loader:
                position += 1
                micro += 1
                batch_tokens = task.count_tokens(batch) if task.count_tokens else 0  # on CPU tensors: no sync
                window["tokens"] += batch_tokens
                step_tokens += batch_tokens
                window["examples"] += task.count_examples(batch)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                sync = micro % cfg.grad_accum == 0
                context = accelerator.no_sync(model) if (not sync and world > 1) else contextlib.nullcontext()
                with context:
                    with accelerator.autocast():
                        loss = model(**batch).loss / cfg.grad_accum
                    accelerator.backward(loss)
                window["loss"] += loss.detach()
                if not sync:
                    continue
                if cfg.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                factor = schedule.factor(step, elapsed())
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window["n"] += 1
                if task.on_step:
                    task.on_step(step, step_tokens)
                    step_tokens = 0

                if step % cfg.log_every == 0 or step == total_steps:
                    now = time.monotonic()
                    span = max(1e-9, now - window["t"])
                    loss_value = float(window["loss"].item()) / window["n"]
                    record = {
                        "step": step,
                        "epoch": round(epoch + position / micro_per_epoch, 4),
                        "loss": loss_value,
                        "lr": base_lrs[0] * factor,
                        "examples_per_s": window["examples"] * world / span,
                        "elapsed_s": round(elapsed(), 3),
                    }
                    if task.count_tokens:
                        record["tokens_per_s"] = window["tokens"] * world / span
                    metrics.write(record)
                    rate = (step - progress_start) / max(1e-9, time.monotonic() - start_time)
                    eta = (total_steps - step) / rate if rate > 0 and total_steps else None
                    if cfg.max_time:
                        eta = min(eta or cfg.max_time, max(0.0, cfg.max_time - elapsed()))
                    progress.update(step, {"loss": loss_value, "tok/s": round(record.get("tokens_per_s", 0)) or None,
                                           "ex/s": round(record["examples_per_s"], 1)}, eta)
                    window.update(loss=torch.zeros((), device=device), n=0, tokens=0, examples=0, t=time.monotonic())

                now = elapsed()
                out_of_time = bool(cfg.max_time and now >= cfg.max_time)
                time_for_eval = next_eval is not None and now >= next_eval
                if world > 1:  # every rank must agree, or they would wait on each other: one collective for both
                    flags = torch.tensor([float(out_of_time), float(time_for_eval)], device=device)
                    out_of_time, time_for_eval = (x > 0 for x in accelerator.reduce(flags, reduction="sum").tolist())
                done = (total_steps is not None and step >= total_steps) or out_of_time
                if out_of_time:
                    stopped_by = "max_time"
                paused = time.monotonic()
                if time_for_eval:
                    next_eval += eval_interval
                if ((eval_every and step % eval_every == 0) or time_for_eval) and not done:
                    run_eval()
                    if save_every is None:
                        save_checkpoint()
                if save_every and step % save_every == 0 and saved_at != step:
                    save_checkpoint()
                window["t"] += time.monotonic() - paused  # evals and checkpoints do not count against throughput
                if done:
                    break
            else:
                # the epoch ran out: next epoch (evaluate at epoch ends unless a step interval is set)
                epoch, position = epoch + 1, 0
                if eval_every is None and eval_interval is None and (total_steps is None or step < total_steps):
                    run_eval()
                    if save_every is None:
                        save_checkpoint()
                continue
    except KeyboardInterrupt:
        progress.close()
        log.warning("interrupted at step %d: writing a checkpoint; continue with --resume", step)
        save_checkpoint()
        raise
    progress.close()
    if evaluated_at != step:
        run_eval()
    if saved_at != step:
        save_checkpoint()
    if main and (task.best_metric is None or task.evaluate is None or best["value"] is None):
        _save_model_atomic(task.save_model, raw_model, run.model_dir)
    accelerator.wait_for_everyone()
    result = TrainResult(step, round(epoch + position / micro_per_epoch, 4), elapsed(), stopped_by, last_eval, best)
    if main:
        from lmforge.evaluation.plots import loss_curve

        loss_curve(run.metrics_path, run.root / "loss.png")
    return result

