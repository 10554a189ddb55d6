"""The task table. Each task is one module in ``lmforge/tasks/`` that declares itself here once, with :func:`register`:
its name, its typed config, how to train it, how to evaluate it, which inference pipeline answers for it and what
the server exposes. The CLI, ``evaluate``, ``predict``, ``serve`` and the model card ask this table; nothing outside
``tasks/`` tests a task's name.

Task modules are cheap to import (torch and transformers are imported inside their functions), so building the CLI
from this table keeps ``lmforge --help`` fast. Adding a task = its module here, its preset in ``configs/``, its test,
and a route file in ``serve/routes/`` only if it answers a new route.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from lmforge.rundir import RunDir

# discovery imports every module of this package; the shared ones (common, lm, pretraining) register nothing
_INFRASTRUCTURE = {"registry"}


@dataclass(frozen=True)
class EvalOptions:
    """What ``lmforge evaluate`` passes to a task's evaluation; each task reads the options that apply to it."""

    data: str | None = None  # data to score on (a file or bundled name[:split]); None: the task's default
    text_field: str | None = None  # record fields, when they differ from the run's
    label_field: str | None = None
    batch_size: int = 64
    limit: int | None = None  # score the first N examples only (slow generative metrics)
    shots: int | None = None  # generative tasks: examples a causal LM is shown first (None: the model's default)


@dataclass(frozen=True)
class Task:
    name: str  # written to the run's lmforge.yaml as ``task``; the CLI command for fine-tuning tasks
    stage: str  # "pretrain" (lmforge pretrain --objective NAME), "finetune" (lmforge finetune NAME), or "none": models
    # lmforge loads and serves as they come, without training them (embed: sentence encoders such as minilm)
    summary: str  # one line for --help
    config: type[BaseModel]  # the typed config; CLI options, YAML presets and lmforge.yaml come from its fields
    train: Callable[..., dict]  # (config, *, show_progress, started) -> run summary
    evaluate: Callable[[RunDir, dict, EvalOptions], dict]  # (run, its lmforge.yaml, options) -> metrics
    pipeline: str  # inference pipeline kind (lmforge.inference.pipelines.PIPELINES)
    flags: tuple[str, ...] = ()  # config fields offered as command-line flags, besides the shared run options
    metrics: tuple[str, ...] = ("loss",)  # eval.json keys for the model card and summaries; the first is headline
    routes: tuple[str, ...] = ()  # server routes that answer this task (modules in lmforge/serve/routes/)
    architectures: tuple[str, ...] = ()  # HF architecture suffixes that load as this task outside a run dir
    report: Callable[[dict], list[Any]] | None = None  # rich renderables for `lmforge evaluate`; None: scalars
    default_data: str | None = None  # the bundled dataset the task learns from when none is given (few-shot examples)


_TASKS: dict[str, Task] = {}
_discovered = False


def register(task: Task) -> Task:
    """Called once by each task module at import."""
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise RuntimeError(f"two tasks are named '{task.name}'")
    _TASKS[task.name] = task
    return task


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("lmforge.tasks")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _INFRASTRUCTURE and not info.name.startswith("_"):
            importlib.import_module(f"lmforge.tasks.{info.name}")
    _discovered = True


def tasks(stage: str | None = None) -> list[Task]:
    """Every registered task (of one stage), in registration order."""
    _discover()
    return [t for t in _TASKS.values() if stage is None or t.stage == stage]


def get(name: str | None, *, where: str | None = None) -> Task:
    """The task called ``name``, or an error that lists the known ones."""
    _discover()
    task = _TASKS.get(name or "")
    if task is None:
        close = difflib.get_close_matches(name or "", list(_TASKS), n=1)
        raise LmforgeError(
            f"unknown task '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
            where=where,
            fix=f"lmforge knows these tasks: {', '.join(_TASKS)}",
        )
    return task


def for_architectures(architectures: list[str]) -> Task | None:
    """The task a plain Hugging Face folder loads as, from its ``config.json`` architectures."""
    for task in tasks():
        if any(arch.endswith(suffix) for arch in architectures for suffix in task.architectures):
            return task
    return None


def routes() -> list[str]:
    """Every server route some task answers, in registration order (the server mounts these)."""
    seen: dict[str, None] = {}
    for task in tasks():
        seen.update(dict.fromkeys(task.routes))
    return list(seen)
