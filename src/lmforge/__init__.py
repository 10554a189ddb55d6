"""lmforge: from raw text to a served language-model application.

Every stage is one plain function (the CLI is a thin wrapper over them)::

    import lmforge
    lmforge.train_tokenizer(TokenizerTrainConfig(corpus=["corpus"], out="tok"))
    lmforge.pretrain(PretrainConfig(tokenizer="tok", size="tiny", out="runs/bert"))
    lmforge.finetune_classify(FinetuneClassifyConfig(model="runs/bert", data="movie-reviews", out="runs/sent"))
    lmforge.evaluate("runs/sent", "movie-reviews:test")
    lmforge.load("runs/sent").predict(["a wonderful film"])

Heavy libraries (torch, transformers) are imported only when a stage runs.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("lmforge.inference.pipelines", "load"),
    "train_tokenizer": ("lmforge.tokenizer", "train_tokenizer"),
    "pretrain": ("lmforge.stages", "pretrain"),
    "finetune_classify": ("lmforge.tasks.classify", "finetune_classify"),
    "evaluate": ("lmforge.evaluation.evaluate", "evaluate_run"),
    "quickstart": ("lmforge.quickstart", "quickstart"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
