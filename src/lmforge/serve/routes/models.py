from __future__ import annotations

from fastapi import APIRouter, HTTPException

from lmforge.serve.deps import ApiKey, Ready, Registry
from lmforge.serve.registry import ServedModel
from lmforge.serve.schemas import ERRORS, ModelDetail, ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey, Ready])


def _card(served: ServedModel) -> dict:
    described = served.pipeline.describe()
    return {"id": served.name, "created": served.created, "task": served.task, "routes": list(served.routes),
            "chat": described.get("chat"), "labels": described.get("labels"),
            "max_length": described.get("max_length"), "long_inputs": described.get("long_inputs"),
            "max_windows": described.get("max_windows"), "metrics": _metrics(served), **_shape(served)}


def _shape(served: ServedModel) -> dict:
    """Family, parameters and size on disk (``lmforge models list``'s columns), counted once per model."""
    if "shape" not in served.extra:
        from lmforge.catalog import folder_entry

        try:
            entry = folder_entry(served.name, "served", served.pipeline.model_dir, "")
            served.extra["shape"] = {"family": entry.family, "parameters": entry.parameters, "size_mb": entry.size_mb,
                                     "license": entry.license}
        except (OSError, ValueError, KeyError):  # a folder without config.json or safetensors: nothing to show
            served.extra["shape"] = {}
    return served.extra["shape"]


def _metrics(served: ServedModel) -> dict | None:
    """The run's last evaluation, as far as its task shows it on the card (the task registry says which keys)."""
    from lmforge.rundir import RunDir

    result = RunDir(served.path).eval_results()
    if not result:
        return None
    keep = ("data", *served.card_metrics, "evaluated")
    return {k: result[k] for k in keep if k in result}


@router.get("/models", response_model=ModelList, summary="the loaded models (OpenAI-compatible list)",
            responses={k: ERRORS[k] for k in (401, 429, 503)})
def list_models(registry: Registry) -> dict:
    return {"object": "list", "data": [_card(m) for m in registry.models.values()]}


@router.get("/models/{name}", response_model=ModelDetail, summary="one model: card, metrics and training curve",
            responses={k: ERRORS[k] for k in (401, 404, 429, 503)})
def model_detail(name: str, registry: Registry) -> dict:
    from lmforge.rundir import RunDir
    from lmforge.training.logging import read_metrics

    served = registry.models.get(name)
    if served is None:
        raise HTTPException(404, f"model '{name}' not found; loaded: {', '.join(registry.models)}")
    run = RunDir(served.path)
    records = read_metrics(run.metrics_path)
    train = [[r["step"], r["loss"]] for r in records if "loss" in r]
    stride = max(1, len(train) // 200)
    evals = [r for r in records if "eval" in r]
    # the curve shows the task's headline metric if the dev evaluations have it, else the dev loss
    metric = next((k for k in (*served.card_metrics[:1], "loss") if evals and k in evals[-1]["eval"]), None)
    info = run.info() if run.config_path.exists() else {}
    return {**_card(served), "curve": train[::stride], "eval_metric": metric,
            "eval_curve": [[r["step"], r["eval"][metric]] for r in evals] if metric else [],
            "config": {k: info.get(k) for k in ("stage", "task", "created", "labels") if k in info} or None,
            "bias": _bias(served.path)}


def _bias(path) -> dict | None:
    """The last bias probe's template results, group by group (mean change, 95% interval, flip rate)."""
    import json
    from pathlib import Path

    found = Path(path) / "bias.json"
    try:
        result = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keep = ("mean_change", "change_ci", "flip_rate", "flagged")
    return {name: {group: {k: r[k] for k in keep if k in r} for group, r in groups.items()}
            for name, groups in (result.get("templates") or {}).items()} or None
