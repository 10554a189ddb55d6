"""``lmforge evaluate RUN --data D``: score a run on labeled data, write eval.json (+ plots), return the metrics."""

from __future__ import annotations

import time
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir, write_json


def evaluate_run(run: str | Path, data: str | None = None, *, text_field: str | None = None,
                 label_field: str | None = None, batch_size: int = 64, write: bool = True,
                 limit: int | None = None) -> dict:
    rd = RunDir.open(run)
    info = rd.info()
    task = info.get("task")
    if task == "classify":
        result = _evaluate_classify(rd, info, data, text_field, label_field, batch_size)
    elif task == "mlm-nsp":
        from lmforge.tasks.pretrain_mlm_nsp import evaluate_pretraining_run

        result = evaluate_pretraining_run(rd, info, data)
    elif task == "clm":
        from lmforge.tasks.pretrain_clm import evaluate_lm_run

        result = evaluate_lm_run(rd, info, data)
    elif task == "code":
        from lmforge.tasks.code import evaluate_code_run

        result = evaluate_code_run(rd, info, data, limit=limit)
    elif task == "chat":
        from lmforge.tasks.chat import evaluate_chat_run

        result = evaluate_chat_run(rd, info, data)
    else:
        raise LmforgeError(f"evaluate does not support task '{task}' yet", where=str(rd.config_path))
    result = {"run": str(rd.root), "task": task, "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    if write:
        write_json(rd.eval_path, result)
    return result


def _evaluate_classify(rd: RunDir, info: dict, data: str | None, text_field: str | None, label_field: str | None,
                       batch_size: int) -> dict:
    from lmforge.data.labeled import check_labels_known, load_text_label
    from lmforge.evaluation.metrics import classification_metrics
    from lmforge.evaluation.plots import confusion_png
    from lmforge.inference.pipelines import ClassificationPipeline

    config = info.get("config") or {}
    if data is None:
        raise LmforgeError("evaluate needs --data", fix="e.g. --data movie-reviews:test")
    labeled = load_text_label(data, text_field or config.get("text_field", "text"),
                              label_field or config.get("label_field", "label"))
    pipeline = ClassificationPipeline(rd.model_dir, info=info)
    check_labels_known(labeled, pipeline.labels, "evaluation")
    predictions = [p["label"] for p in pipeline.predict(labeled.texts, batch_size=batch_size)]
    metrics = classification_metrics(labeled.labels, predictions, pipeline.labels)
    confusion_png(metrics["confusion_matrix"], pipeline.labels, rd.root / "confusion.png")
    return {"data": data, **metrics}
