"""lmforge: from raw text to a served language-model application.

Every stage is one plain function (the CLI is a thin wrapper over them)::

    import lmforge
    lmforge.train_tokenizer(lmforge.TokenizerTrainConfig(corpus=["corpus"], out="tok"))
    lmforge.pretrain(lmforge.MlmNspConfig(tokenizer="tok", size="tiny", out="runs/bert"))
    lmforge.finetune_classify(lmforge.FinetuneClassifyConfig(model="runs/bert", data="movie-reviews", out="runs/sent"))
    lmforge.evaluate("runs/sent", "movie-reviews:test")
    lmforge.load("runs/sent").predict(["a wonderful film"])

Heavy libraries (torch, transformers) are imported only when a stage runs.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("lmforge.stages", "load"),
    "train_tokenizer": ("lmforge.data.tokenizer", "train_tokenizer"),
    "pretrain": ("lmforge.stages", "pretrain"),
    "finetune": ("lmforge.stages", "finetune"),
    "evaluate": ("lmforge.stages", "evaluate"),
    "quickstart": ("lmforge.quickstart", "quickstart"),
    "finetune_classify": ("lmforge.tasks.classify", "finetune_classify"),
    "finetune_chat": ("lmforge.tasks.chat", "finetune_chat"),
    "finetune_code": ("lmforge.tasks.code", "finetune_code"),
    "finetune_qa": ("lmforge.tasks.qa", "finetune_qa"),
    "TokenizerTrainConfig": ("lmforge.config", "TokenizerTrainConfig"),
    "PretrainConfig": ("lmforge.config", "PretrainConfig"),
    "MlmNspConfig": ("lmforge.tasks.pretrain_mlm_nsp", "MlmNspConfig"),
    "ClmConfig": ("lmforge.tasks.pretrain_clm", "ClmConfig"),
    "FinetuneClassifyConfig": ("lmforge.tasks.classify", "FinetuneClassifyConfig"),
    "FinetuneChatConfig": ("lmforge.tasks.chat", "FinetuneChatConfig"),
    "FinetuneCodeConfig": ("lmforge.tasks.code", "FinetuneCodeConfig"),
    "FinetuneQAConfig": ("lmforge.tasks.qa", "FinetuneQAConfig"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
