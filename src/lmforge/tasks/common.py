"""What every task shares around the loop: running a prepared task, saving an HF folder, loading a run's model for
evaluation, pretraining set-up, the run summary. Cheap to import (torch is imported inside the functions)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.rundir import RunDir, file_fingerprint

if TYPE_CHECKING:
    from pydantic import BaseModel

    from lmforge.training.loop import TaskSpec, TrainResult

log = logging.getLogger("lmforge")

# prepare(config) -> (what the loop trains, the run dir, extra summary fields)
Prepare = Callable[[Any], "tuple[TaskSpec, RunDir, dict]"]


def run_training(prepare: Prepare, config: Any, show_progress: bool = True, started: float | None = None,
                 resolve: Callable[[Any], Any] | None = None) -> dict:
    """Prepare a task and train it within the config's budget, which counts from ``started`` (a
    ``time.monotonic()`` value; the command line passes its own start) or from now, set-up included; draw the loss
    curve; return the run summary. ``resolve`` completes the user's config first (a dataset's recipe), so the run
    dir records and the loop trains with one and the same config."""
    from lmforge import dist
    from lmforge.rundir import check_output_dir
    from lmforge.training.loop import train

    started = time.monotonic() if started is None else started
    config = resolve(config) if resolve is not None else config
    check_output_dir(config.out, overwrite=config.overwrite, resume=config.resume)  # refuse before any work
    spec, run, extra = prepare(config)
    result = train(spec, config.train, run, resume=config.resume, show_progress=show_progress, started=started)
    if dist.is_main():
        from lmforge.evaluation.plots import loss_curve

        loss_curve(run.metrics_path, run.root / "loss.png")
    for warning in result.warnings:
        log.warning("%s", warning)
    return summary(run, result, time.monotonic() - started, **extra)


def training_stage(prepare: Prepare, doc: str, resolve: Callable[[Any], Any] | None = None) -> Callable[..., dict]:
    """A task's stage function: ``stage(config, *, show_progress=True, started=None) -> run summary``."""

    def stage(config: Any, *, show_progress: bool = True, started: float | None = None) -> dict:
        return run_training(prepare, config, show_progress, started, resolve)

    stage.__doc__ = doc
    return stage


def summary(run: RunDir, result: TrainResult, wall: float, **extra: Any) -> dict:
    return {"run": str(run.root), "steps": result.steps, "epochs": result.epochs, "elapsed_s": round(wall, 1),
            "stopped_by": result.stopped_by, "timing": result.timing, "best": result.best,
            "last_eval": result.last_eval, "warnings": result.warnings, **extra}


def hf_saver(tokenizer, unwrap: Callable[[Any], Any] = lambda m: m) -> Callable[[Any, Path], None]:
    """A ``save_model`` for TaskSpec: safetensors weights, config and tokenizer, as one HF folder."""

    def save(model, path: Path) -> None:
        from lmforge.models import carry_license

        unwrap(model).save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        carry_license(unwrap(model), path)

    return save


def data_info(spec: str, files: list, **counts: Any) -> dict:
    """How a run's lmforge.yaml records a data split: its spec, sizes and file fingerprints."""
    return {"spec": spec, **counts, "files": [file_fingerprint(f) for f in files]}


def bundled_dev_split(data: str, eval_spec: str | None) -> str | None:
    """The dev data to use: ``eval_spec`` if given, else the bundled dataset's dev split (when ``data`` is a
    bundled dataset's other split), else None (the caller holds out a share of the training data)."""
    from lmforge.data.readers import resolve

    if eval_spec:
        return eval_spec
    source = resolve(data)
    if source.bundled is not None and "dev" in source.bundled.splits and source.split != "dev":
        return f"{source.bundled.name}:dev"
    return None


# ------------------------------------------------------------------------------------------------ evaluation
def run_config(config_cls: type[BaseModel], info: dict) -> BaseModel:
    """A run's resolved config from its lmforge.yaml; keys this version no longer knows are dropped."""
    raw = dict(info.get("config") or {})
    known = {k: v for k, v in raw.items() if k in config_cls.model_fields}
    return config_cls.model_validate(known)


def load_run_model(run: RunDir, cls: Any) -> tuple[Any, Any]:
    """A run's tokenizer and model (``cls``, e.g. ``AutoModelForCausalLM``), in eval mode."""
    from lmforge.models import from_pretrained, load_tokenizer

    tokenizer = load_tokenizer(run.model_dir)
    model = from_pretrained(cls, run.model_dir, attn_implementation="sdpa").eval()
    return tokenizer, model
