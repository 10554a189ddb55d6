"""The stage functions behind the CLI and the Python API. They ask the task registry which task does the work, so
nothing here knows a task by name: a new task module is picked up by every stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmforge.errors import LmforgeError, ModelLoadError
from lmforge.rundir import RUN_FILE, RunDir, write_json
from lmforge.tasks import registry
from lmforge.tasks.registry import EvalOptions, Task


def pretrain_task(objective: str | None) -> Task:
    """The pretraining task for ``--objective`` (default: the config's own default)."""
    from lmforge.config import PretrainConfig

    name = objective or PretrainConfig.model_fields["objective"].default
    task = registry.get(name, where="--objective")
    if task.stage != "pretrain":
        names = ", ".join(t.name for t in registry.tasks("pretrain"))
        raise LmforgeError(f"'{name}' is not a pretraining objective", where="--objective",
                           fix=f"choose one of: {names}")
    return task


def _as(config: BaseModel, task: Task) -> BaseModel:
    """A config of the task's own class (a plain PretrainConfig is re-validated as the objective's subclass)."""
    if isinstance(config, task.config):
        return config
    return task.config.model_validate(config.model_dump(exclude_unset=True))


def pretrain(config: BaseModel, *, show_progress: bool = True, started: float | None = None) -> dict:
    """Pretrain with ``config.objective``'s task; returns the run summary. A ``--max-time`` budget counts from
    ``started`` (``time.monotonic()``; default: now)."""
    task = pretrain_task(config.objective)
    return task.train(_as(config, task), show_progress=show_progress, started=started)


def finetune(task_name: str, config: BaseModel, *, show_progress: bool = True, started: float | None = None) -> dict:
    """Fine-tune for the named task; returns the run summary."""
    task = registry.get(task_name)
    return task.train(_as(config, task), show_progress=show_progress, started=started)


class ModelFolder(RunDir):
    """A model that is not a run dir (an HF folder, a hub id, smollm2) evaluated like one: its plots go to a
    scratch folder and no eval.json is written beside it."""

    def __init__(self, model_dir: Path, scratch: Path) -> None:
        super().__init__(scratch)
        self._model_dir = Path(model_dir)

    model_dir = property(lambda self: self._model_dir)


def evaluate(run: str | Path, data: str | None = None, *, task: str | None = None, text_field: str | None = None,
             label_field: str | None = None, batch_size: int = 64, limit: int | None = None,
             shots: int | None = None, store: str | None = None, write: bool = True) -> dict:
    """Score a run with its task's metrics (or ``task``'s); writes ``RUN/eval.json`` (and the task's plots) and
    returns the metrics. ``run`` may also be any model lmforge loads (e.g. ``smollm2``, zero-shot): then ``task``
    says which evaluation (default: the one its architecture maps to) and nothing is written."""
    import tempfile

    options = EvalOptions(data=data, text_field=text_field, label_field=label_field, batch_size=batch_size,
                          limit=limit, shots=shots)
    from lmforge.kb.location import is_kb

    if store or is_kb(run):  # a knowledge base (``store``: the KB named ``run`` there): retrieval on Q -> A pairs
        from lmforge.kb.evaluate import evaluate_kb

        result = {**evaluate_kb(run, data or "python-faq", store=store, question_field=text_field,
                                answer_field=label_field, limit=limit), "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if write and not store:
            write_json(Path(run) / "eval.json", result)
        return result
    if (Path(run) / RUN_FILE).exists():
        rd, scratch = RunDir.open(run), None
        info = rd.info()
        chosen = registry.get(task or info.get("task"), where="--task" if task else str(rd.config_path))
    else:
        found, model_dir, info = resolve_task(run)
        chosen = registry.get(task, where="--task") if task else found
        scratch = tempfile.TemporaryDirectory(prefix="lmforge-eval-")
        rd, write = ModelFolder(model_dir, Path(scratch.name)), False
    try:
        result = chosen.evaluate(rd, info, options)
    finally:
        if scratch is not None:
            scratch.cleanup()
    result = {"run": str(run), "task": chosen.name, "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    if write:
        write_json(rd.eval_path, result)
    return result


def resolve_task(run: str | Path) -> tuple[Task, Path, dict]:
    """The task, model folder and run info of a run dir, or of a plain Hugging Face folder (by its architecture)."""
    from lmforge.inference.pipelines import architectures
    from lmforge.models import resolve_model_path

    root = Path(run)
    if (root / RUN_FILE).exists():
        rd = RunDir.open(root)
        info = rd.info()
        return registry.get(info.get("task"), where=str(rd.config_path)), rd.model_dir, info
    model_dir = Path(resolve_model_path(run))
    if not model_dir.is_dir():
        raise ModelLoadError(f"'{run}' is not a local run dir or model folder", fix="give a run dir or a model folder")
    found = architectures(model_dir)
    task = registry.for_architectures(found)
    if task is None:
        raise ModelLoadError(
            f"'{run}' is a {', '.join(found) or 'model without architectures'}, which no lmforge task serves",
            fix="give a run dir, or a folder of a sequence classifier, masked LM or causal LM",
        )
    return task, model_dir, {}


def load(run: str | Path, *, name: str | None = None, device: str | None = None, precision: str = "auto") -> Any:
    """Load a run dir (or a Hugging Face model folder, or an embedded model) as the inference pipeline of its task.
    ``precision``: the weights decoders generate with (auto: int8 on a CPU, bfloat16 on a GPU; or float32)."""
    from lmforge.inference.pipelines import PIPELINES

    task, model_dir, info = resolve_task(run)
    return PIPELINES[task.pipeline](model_dir, name=name or Path(run).name, info=info, device=device, task=task.name,
                                    precision=precision)
