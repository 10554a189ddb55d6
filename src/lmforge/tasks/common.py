"""What every task shares around the loop: saving an HF folder, pretraining set-up, the run summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge.rundir import RunDir, file_fingerprint
from lmforge.training.loop import TaskSpec, TrainResult, seed_everything, train


def hf_saver(tokenizer, unwrap: Callable[[torch.nn.Module], Any] = lambda m: m) -> Callable[[torch.nn.Module, Path], None]:
    """A ``save_model`` for TaskSpec: safetensors weights, config and tokenizer, as one HF folder."""

    def save(model: torch.nn.Module, path: Path) -> None:
        unwrap(model).save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)

    return save


def summary(run: RunDir, result: TrainResult, **extra: Any) -> dict:
    return {"run": str(run.root), "steps": result.steps, "epochs": result.epochs, "elapsed_s": round(result.elapsed, 1),
            "stopped_by": result.stopped_by, "best": result.best, "last_eval": result.last_eval, **extra}


def run_stage(prepared: tuple, config: Any, show_progress: bool) -> dict:
    """Train a prepared ``(task, run[, extra])`` with the config's loop settings and summarise the run."""
    task, run, *rest = prepared
    result = train(task, config.train, run, resume=config.resume, show_progress=show_progress)
    return summary(run, result, **({"parameters": rest[0]} if rest else {}))


def pretraining_model(config, tokenizer, tokenizer_spec: str, cls: Any, build: Callable[[], torch.nn.Module]):
    """Resolve the LR and budget defaults, seed, and load ``--init`` (checking its vocabulary) or build a preset."""
    from lmforge.errors import ModelLoadError
    from lmforge.models import SCRATCH_LR, from_pretrained

    if config.train.lr is None:
        config.train.lr = 1e-4 if config.init else SCRATCH_LR[config.size]
    if config.train.max_steps is None and config.train.epochs is None and config.train.max_time is None:
        config.train.epochs = 1.0
    seed_everything(config.train.seed)
    if not config.init:
        return build()
    model = from_pretrained(cls, config.init, attn_implementation="sdpa")
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise ModelLoadError(
            f"tokenizer {tokenizer_spec} has {len(tokenizer)} tokens, model {config.init} only {rows}",
            fix="use the model's own tokenizer (leave out --tokenizer)",
        )
    return model


def corpus_info(files: list[Path], cache, eval_docs) -> dict:
    return {"files": [file_fingerprint(f) for f in files], "tokens": cache.n_tokens, "documents": cache.n_docs,
            "eval_documents": len(eval_docs), "cache": str(cache.folder)}


__all__ = ["TaskSpec", "hf_saver", "summary", "run_stage", "pretraining_model", "corpus_info"]
