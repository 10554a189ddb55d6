"""GPT-style causal-LM pretraining on packed sequences from the token cache.

Held-in documents are concatenated with an end-of-text token between them into one stream, cut into full windows of
``seq_len`` tokens (see :class:`lmforge.tasks.lm.PackedWindows`): no padding is ever computed. The LM head and the
cross-entropy run in chunks (:mod:`lmforge.training.objectives`), so the full logits never exist.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from lmforge.config import PretrainConfig
from lmforge.data.readers import corpus_files
from lmforge.data.token_cache import split_documents, token_cache
from lmforge.errors import DataError
from lmforge.rundir import RunDir
from lmforge.tasks.common import load_run_model, run_config, training_stage
from lmforge.tasks.lm import document_stream, eos_id, fixed_windows, packed_lm_task, score_lm
from lmforge.tasks.pretraining import corpus_info, resolve_tokenizer, start_model
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")
WHY_EOS = "causal LM pretraining separates documents with it"


class ClmConfig(PretrainConfig):
    objective: Literal["clm"] = Field("clm", description="GPT causal language modeling")


def prepare_clm(config: ClmConfig):
    from transformers import AutoModelForCausalLM

    from lmforge.models import build_gpt

    tokenizer, tokenizer_spec = resolve_tokenizer(config)
    eos = eos_id(tokenizer, WHY_EOS)
    files = corpus_files(config.corpus)
    cache = token_cache(tokenizer, files)
    train_docs, eval_docs = split_documents(cache, config.eval_fraction)
    train_stream = document_stream(cache, train_docs, eos)
    needed = (config.seq_len + 1) * config.train.batch_size
    if len(train_stream) < needed:
        raise DataError(
            f"corpus {', '.join(config.corpus)} is too small for seq_len {config.seq_len}: {len(train_stream):,} "
            f"training tokens, but one batch of {config.train.batch_size} sequences needs {needed:,}",
            fix="add text, or lower --seq-len / --batch-size",
        )
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    model, n_params = start_model(config, run, tokenizer, tokenizer_spec, AutoModelForCausalLM,
                                  lambda: build_gpt(config.size, tokenizer, config.seq_len, config.arch),
                                  corpus_info(files, cache, eval_docs))
    eval_batches = fixed_windows(document_stream(cache, eval_docs, eos), config.seq_len, config.max_eval_sequences,
                                 config.train.batch_size)
    log.info("pretraining a causal LM (%.1fM parameters) on %s tokens", n_params / 1e6, f"{len(train_stream):,}")
    spec = packed_lm_task("pretrain clm", model, tokenizer, train_stream, config.seq_len, config.train.batch_size,
                          config.train.seed, eval_batches, eval_times=10)
    return spec, run, {"parameters": n_params}


pretrain_clm = training_stage(prepare_clm, "Pretrain a causal LM; returns the run summary.")


def evaluate_clm(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """Held-out loss, perplexity and next-token accuracy: the run's own held-out documents, or all of a corpus."""
    from transformers import AutoModelForCausalLM

    config = run_config(ClmConfig, info)
    tokenizer, model = load_run_model(run, AutoModelForCausalLM)
    cache = token_cache(tokenizer, corpus_files([options.data] if options.data else config.corpus))
    docs = np.arange(cache.n_docs) if options.data else split_documents(cache, config.eval_fraction)[1]
    stream = document_stream(cache, docs, eos_id(tokenizer, WHY_EOS))
    batches = fixed_windows(stream, config.seq_len, config.max_eval_sequences, config.train.batch_size)
    return {"data": options.data or "held-out documents", **score_lm(model, batches)}


TASK = register(Task(
    name="clm", stage="pretrain", config=ClmConfig, train=pretrain_clm, evaluate=evaluate_clm,
    summary="GPT-style decoder: causal language modeling on packed sequences",
    pipeline="text-generation", routes=("openai", "translate", "summarize"),
    architectures=("ForCausalLM", "LMHeadModel"),
    metrics=("perplexity", "token_accuracy", "loss"),
))
