"""GPT-style causal-LM pretraining on packed sequences from the token cache.

Held-in documents are concatenated with an end-of-text token between them into one stream; each epoch the stream is
cut into windows of ``seq_len`` tokens from a fresh random offset, in a fresh random order. Every window is full: no
padding is ever computed, and shapes are static (good for ``torch.compile`` and CUDA graphs).
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch

from lmforge.config import PretrainConfig
from lmforge.data.token_cache import TokenCache, split_documents, token_cache
from lmforge.errors import DataError, ModelLoadError
from lmforge.rundir import RunDir
from lmforge.tasks.common import TaskSpec, corpus_info, hf_saver, pretraining_model, run_stage
from lmforge.tasks.lm_loss import CausalLMObjective

log = logging.getLogger("lmforge")


def document_stream(cache: TokenCache, doc_ids: np.ndarray, eos_id: int) -> np.ndarray:
    """The chosen documents' tokens, each followed by ``eos_id``, as one array."""
    starts = cache.doc_starts
    pieces = []
    eos = np.asarray([eos_id], dtype=cache.tokens.dtype)
    for d in doc_ids:
        pieces.append(cache.tokens[starts[d] : starts[d + 1]])
        pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=cache.tokens.dtype)


class PackedWindows:
    """Batches of full ``seq_len`` windows over a token stream; (epoch, index) -> the same batch every time."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed
        self.windows = (len(stream) - 1) // seq_len  # an offset of up to seq_len - 1 still fits this many

    @lru_cache(maxsize=2)
    def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, 2])
        spare = len(self.stream) - self.windows * self.seq_len
        offset = int(rng.integers(0, max(1, spare)))
        return offset, rng.permutation(self.windows)

    def num_batches(self, epoch: int) -> int:
        return self.windows // self.batch_size

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        offset, order = self._plan(epoch)
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        starts = offset + rows * self.seq_len
        ids = np.stack([self.stream[s : s + self.seq_len] for s in starts]).astype(np.int64)  # [B, T]
        tensor = torch.from_numpy(ids)
        return {"input_ids": tensor, "labels": tensor}


def fixed_windows(stream: np.ndarray, seq_len: int, max_sequences: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    count = min(max_sequences, len(stream) // seq_len)
    if count == 0:
        return []
    ids = torch.from_numpy(stream[: count * seq_len].astype(np.int64).reshape(count, seq_len))
    return [{"input_ids": ids[i : i + batch_size], "labels": ids[i : i + batch_size]} for i in range(0, count, batch_size)]


@torch.no_grad()
def score_lm(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean token loss (HF shifts labels inside the model), perplexity and next-token accuracy."""
    device = next(model.parameters()).device
    loss_sum = correct = count = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        labels = batch["labels"][:, 1:]
        valid = labels != -100
        n = int(valid.sum())
        loss_sum += float(out.loss) * n
        correct += int(((out.logits[:, :-1].argmax(-1) == labels) & valid).sum())
        count += n
    loss = loss_sum / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(1, count)}


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelLoadError(
            "the tokenizer has no end-of-text token; causal LM pretraining separates documents with it",
            fix="train one with `lmforge tokenizer train --kind bpe`, or use a GPT-style tokenizer",
        )
    return int(eos)


def prepare_clm(config: PretrainConfig) -> tuple[TaskSpec, RunDir, int]:
    from transformers import AutoModelForCausalLM

    from lmforge.models import build_gpt
    from lmforge.tasks.pretrain_mlm_nsp import resolve_tokenizer
    from lmforge.tokenizer import corpus_files

    tokenizer, tokenizer_spec = resolve_tokenizer(config)
    eos = _eos_id(tokenizer)
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
    model = pretraining_model(config, tokenizer, tokenizer_spec, AutoModelForCausalLM,
                              lambda: build_gpt(config.size, tokenizer, config.seq_len, config.arch))
    n_params = sum(p.numel() for p in model.parameters())
    eval_stream = document_stream(cache, eval_docs, eos)
    eval_batches = fixed_windows(eval_stream, config.seq_len, config.max_eval_sequences, config.train.batch_size)
    run.write_info(
        stage="pretrain",
        task="clm",
        config=config,
        extra={"parameters": n_params, "corpus": corpus_info(files, cache, eval_docs)},
    )
    log.info("pretraining a causal LM (%.1fM parameters) on %s tokens", n_params / 1e6, f"{len(train_stream):,}")

    task = TaskSpec(
        name="pretrain clm",
        model=CausalLMObjective(model),
        train_data=PackedWindows(train_stream, config.seq_len, config.train.batch_size, config.train.seed),
        save_model=hf_saver(tokenizer, unwrap=lambda wrapper: wrapper.model),
        evaluate=(lambda wrapper: score_lm(wrapper.model, eval_batches)) if eval_batches else None,
        count_tokens=lambda b: b["input_ids"].numel(),
        eval_times=10,
    )
    return task, run, n_params


def pretrain_clm(config: PretrainConfig, *, show_progress: bool = True) -> dict:
    return run_stage(prepare_clm(config), config, show_progress)


def evaluate_lm_run(run: RunDir, info: dict, data: str | None) -> dict:
    """Held-out loss and perplexity: the run's own held-out documents, or all of ``data`` (a corpus)."""
    from transformers import AutoModelForCausalLM

    from lmforge.models import from_pretrained, load_tokenizer
    from lmforge.tokenizer import corpus_files

    config = PretrainConfig.model_validate(info["config"])
    tokenizer = load_tokenizer(run.model_dir)
    model = from_pretrained(AutoModelForCausalLM, run.model_dir, attn_implementation="sdpa").eval()
    cache = token_cache(tokenizer, corpus_files([data] if data else config.corpus))
    docs = np.arange(cache.n_docs) if data else split_documents(cache, config.eval_fraction)[1]
    stream = document_stream(cache, docs, _eos_id(tokenizer))
    batches = fixed_windows(stream, config.seq_len, config.max_eval_sequences, config.train.batch_size)
    return {"data": data or "held-out documents", **score_lm(model, batches)}
