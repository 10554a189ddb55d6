"""What the pretraining objectives share: the tokenizer, the model to start from (a size preset or ``--init``), and
the run's record of its corpus. Cheap to import (transformers is imported inside the functions)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.errors import ModelLoadError
from lmforge.rundir import RunDir, file_fingerprint


def resolve_tokenizer(config) -> tuple[Any, str]:
    """The pretraining tokenizer: ``--tokenizer``, else the ``--init`` model's own."""
    from lmforge.models import load_tokenizer

    if config.tokenizer is None and config.init is None:
        raise ModelLoadError(
            "pretraining needs a tokenizer",
            fix="pass --tokenizer DIR (make one with `lmforge tokenizer train`) or --init MODEL",
        )
    spec = config.tokenizer or config.init
    return load_tokenizer(spec), spec


def start_model(config, run: RunDir, tokenizer, tokenizer_spec: str, cls: Any, build: Callable[[], Any],
                corpus: dict) -> tuple[Any, int]:
    """Resolve the LR and budget defaults, seed, load ``--init`` (checking its vocabulary) or build a preset, and
    record the run (its config, size and corpus) in lmforge.yaml. Returns the model and its parameter count."""
    from lmforge.models import SCRATCH_LR, from_pretrained
    from lmforge.training.loop import seed_everything

    if config.train.lr is None:
        config.train.lr = 1e-4 if config.init else SCRATCH_LR[config.size]
    if config.train.max_steps is None and config.train.epochs is None and config.train.max_time is None:
        config.train.epochs = 1.0
    seed_everything(config.train.seed)
    if config.init:
        model = from_pretrained(cls, config.init, attn_implementation="sdpa")
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise ModelLoadError(
                f"tokenizer {tokenizer_spec} has {len(tokenizer)} tokens, model {config.init} only {rows}",
                fix="use the model's own tokenizer (leave out --tokenizer)",
            )
    else:
        model = build()
    parameters = sum(p.numel() for p in model.parameters())
    run.write_info(stage="pretrain", task=config.objective, config=config,
                   extra={"parameters": parameters, "corpus": corpus})
    return model, parameters


def corpus_info(files: list[Path], cache, eval_docs) -> dict:
    return {"files": [file_fingerprint(f) for f in files], "tokens": cache.n_tokens, "documents": cache.n_docs,
            "eval_documents": len(eval_docs), "cache": str(cache.folder)}
