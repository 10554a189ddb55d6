"""T5-style pretraining: span corruption (:mod:`lmforge.data.span_corruption`) on an encoder-decoder.

The corpus stream (documents separated by the end-of-text token) is cut into chunks whose corrupted input is exactly
``seq_len`` tokens, so no batch is ever padded; each chunk's noise mask is drawn from ``(seed, epoch, batch)``, so a
resumed run sees the same masks. The tokenizer gets T5's sentinel tokens (``<extra_id_0>`` ...) and a pad token (the
decoder's start) when it lacks them; the run saves a plain ``T5ForConditionalGeneration`` folder.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from lmforge.config import PretrainConfig
from lmforge.data.readers import corpus_files
from lmforge.data.span_corruption import SENTINELS, corrupt, noise_counts, noise_mask, sentinel_tokens
from lmforge.data.token_cache import split_documents, token_cache
from lmforge.errors import DataError
from lmforge.rundir import RunDir
from lmforge.tasks.common import hf_saver, load_run_model, run_config, training_stage
from lmforge.tasks.lm import document_stream, score_seq2seq
from lmforge.tasks.pretraining import corpus_info, resolve_tokenizer, start_model
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")


class SpanCorruptionConfig(PretrainConfig):
    objective: Literal["span-corruption"] = Field("span-corruption", description="T5 span corruption")
    seq_len: int = Field(256, ge=16, le=8192, description="tokens per corrupted input sequence (packed)")
    noise_density: float = Field(0.15, gt=0, lt=1, description="share of tokens dropped from the input")
    mean_span: float = Field(3.0, ge=1, description="mean length of a dropped span")


def raw_length(seq_len: int, density: float, mean_span: float) -> int:
    """The longest chunk whose corrupted input (kept tokens + one sentinel per span + end of text) fits ``seq_len``."""
    def input_length(raw: int) -> int:
        noise, spans = noise_counts(raw, density, mean_span)
        return raw - noise + spans + 1

    raw = seq_len
    while input_length(raw + 1) <= seq_len:
        raw += 1
    while input_length(raw) > seq_len:
        raw -= 1
    return raw


class SpanCorruptionBatches:
    """Chunks of ``raw`` tokens, shuffled per epoch, corrupted with a mask drawn from ``(seed, epoch, batch)``."""

    def __init__(self, stream: np.ndarray, raw: int, batch_size: int, seed: int, sentinel_ids: list[int], eos: int,
                 density: float, mean_span: float, shuffle: bool = True) -> None:
        self.stream, self.raw, self.batch_size, self.seed = stream, raw, batch_size, seed
        self.sentinel_ids, self.eos, self.density, self.mean_span, self.shuffle = (
            sentinel_ids, eos, density, mean_span, shuffle)
        self.chunks = len(stream) // raw

    def num_batches(self, epoch: int) -> int:
        return self.chunks // self.batch_size

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders, alive as long as the batch source itself
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.chunks)
        return np.random.default_rng([self.seed, epoch]).permutation(self.chunks)

    def batch(self, epoch: int, index: int) -> dict:
        import torch

        rng = np.random.default_rng([self.seed, epoch, index, 1])
        inputs, targets = [], []
        for chunk in self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]:
            ids = self.stream[chunk * self.raw : (chunk + 1) * self.raw]
            pair = corrupt(ids, noise_mask(self.raw, rng, self.density, self.mean_span), self.sentinel_ids, self.eos)
            inputs.append(pair[0])
            targets.append(pair[1])
        input_ids = torch.tensor(inputs, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "labels": torch.tensor(targets, dtype=torch.long)}


def prepare_t5_tokenizer(tokenizer) -> tuple[list[int], int]:
    """Add the sentinels (and a pad token, which starts the decoder) where missing; the sentinel ids and the end of
    text (the tokenizer's eos, else its separator)."""
    missing = [t for t in sentinel_tokens() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise DataError("the tokenizer has neither an end-of-text nor a separator token; span corruption ends every "
                        "sequence with one", fix="train one with `lmforge tokenizer train --kind bpe`")
    return tokenizer.convert_tokens_to_ids(sentinel_tokens()), int(eos)


def prepare_span(config: SpanCorruptionConfig):
    from transformers import AutoModelForSeq2SeqLM

    from lmforge.models import build_t5
    from lmforge.training.loop import TaskSpec

    tokenizer, tokenizer_spec = resolve_tokenizer(config)
    sentinel_ids, eos = prepare_t5_tokenizer(tokenizer)
    files = corpus_files(config.corpus)
    cache = token_cache(tokenizer, files)
    train_docs, eval_docs = split_documents(cache, config.eval_fraction)
    raw = raw_length(config.seq_len, config.noise_density, config.mean_span)
    if noise_counts(raw, config.noise_density, config.mean_span)[1] > SENTINELS:
        raise DataError(f"seq_len {config.seq_len} would need more than {SENTINELS} noise spans per sequence",
                        fix="lower --seq-len or raise mean_span")
    train_stream = document_stream(cache, train_docs, eos)
    if len(train_stream) < raw * config.train.batch_size:
        raise DataError(
            f"corpus {', '.join(config.corpus)} is too small for seq_len {config.seq_len}: {len(train_stream):,} "
            f"training tokens, but one batch of {config.train.batch_size} needs {raw * config.train.batch_size:,}",
            fix="add text, or lower --seq-len / --batch-size")
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    model, n_params = start_model(config, run, tokenizer, tokenizer_spec, AutoModelForSeq2SeqLM,
                                  lambda: build_t5(config.size, tokenizer, config.arch),
                                  corpus_info(files, cache, eval_docs))
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):  # --init without the sentinels
        model.resize_token_embeddings(len(tokenizer))
    eval_source = SpanCorruptionBatches(document_stream(cache, eval_docs, eos), raw, config.train.batch_size,
                                        config.train.seed, sentinel_ids, eos, config.noise_density, config.mean_span,
                                        shuffle=False)
    count = min(eval_source.num_batches(0), -(-config.max_eval_sequences // config.train.batch_size))
    eval_batches = [eval_source.batch(0, i) for i in range(count)]
    log.info("pretraining a T5 encoder-decoder (%.1fM parameters) by span corruption on %s tokens",
             n_params / 1e6, f"{len(train_stream):,}")
    spec = TaskSpec(
        name="pretrain span-corruption", model=model,
        train_data=SpanCorruptionBatches(train_stream, raw, config.train.batch_size, config.train.seed, sentinel_ids,
                                         eos, config.noise_density, config.mean_span),
        save_model=hf_saver(tokenizer), evaluate=(lambda m: score_seq2seq(m, eval_batches)) if eval_batches else None,
        best_metric=None, count_tokens=lambda b: int(b["input_ids"].numel() + b["labels"].numel()),
        eval_times=10, eval_size=count * config.train.batch_size,
    )
    return spec, run, {"parameters": n_params}


pretrain_span = training_stage(prepare_span, "Pretrain a T5 encoder-decoder by span corruption; returns the summary.")


def evaluate_span(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """Held-out span-corruption loss, perplexity and token accuracy (fixed masks): the run's held-out documents, or
    all of a corpus."""
    from transformers import AutoModelForSeq2SeqLM

    config = run_config(SpanCorruptionConfig, info)
    tokenizer, model = load_run_model(run, AutoModelForSeq2SeqLM)
    sentinel_ids, eos = prepare_t5_tokenizer(tokenizer)
    cache = token_cache(tokenizer, corpus_files([options.data] if options.data else config.corpus))
    docs = np.arange(cache.n_docs) if options.data else split_documents(cache, config.eval_fraction)[1]
    source = SpanCorruptionBatches(document_stream(cache, docs, eos), raw_length(
        config.seq_len, config.noise_density, config.mean_span), config.train.batch_size, config.train.seed,
        sentinel_ids, eos, config.noise_density, config.mean_span, shuffle=False)
    count = min(source.num_batches(0), -(-config.max_eval_sequences // config.train.batch_size))
    if count == 0:
        raise DataError(f"{options.data or 'the held-out documents'}: too little text for one batch",
                        fix="evaluate on a larger corpus with --data")
    return {"data": options.data or "held-out documents", **score_seq2seq(model, [source.batch(0, i)
                                                                                  for i in range(count)])}


TASK = register(Task(
    name="span-corruption", stage="pretrain", config=SpanCorruptionConfig, train=pretrain_span,
    evaluate=evaluate_span,
    summary="T5-style encoder-decoder: span corruption (15% of tokens dropped in spans of ~3, sentinels in their place)",
    pipeline="text2text-generation", routes=(), architectures=("T5ForConditionalGeneration",),
    metrics=("perplexity", "token_accuracy", "loss"),
))
