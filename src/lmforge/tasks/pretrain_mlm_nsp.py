"""BERT pretraining: masked language modeling + next-sentence prediction, on packed sequences from the token cache.

Instances: each held-in document is cut into chunks of ``seq_len - 3`` tokens; a chunk is split into A and B at a
random point (snapped to the nearest line boundary when one is inside), and with probability 1/2 B is replaced by a
span of the same length from another document (NSP label 1, as in HF: 0 means "B continues A"). Random B spans
have the true span's length, so length cannot give the label away. Every full chunk fills the sequence exactly; the
short tails of documents are grouped by length, so almost no padding is computed.

Masking follows BERT: 15% of the real tokens of each sequence (never [CLS]/[SEP]/padding), of which 80% become
[MASK], 10% a random token and 10% stay. Positions are a fixed number per sequence, so shapes are static, and the
MLM head (transform + decoder matmul) runs on those positions only instead of on every token.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from lmforge.config import PretrainConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.data.readers import corpus_files
from lmforge.data.token_cache import TokenCache, split_documents, token_cache
from lmforge.errors import DataError, ModelLoadError
from lmforge.rundir import RunDir
from lmforge.tasks.common import hf_saver, load_run_model, run_config, training_stage
from lmforge.tasks.pretraining import corpus_info, resolve_tokenizer, start_model
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")
NOT_NEXT = 1


class MlmNspConfig(PretrainConfig):
    objective: Literal["mlm-nsp"] = Field("mlm-nsp", description="BERT masked LM + next-sentence prediction")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="share of tokens masked for MLM")


@dataclass
class Instances:
    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    nsp_label: np.ndarray

    def __len__(self) -> int:
        return len(self.a_start)

    @property
    def lengths(self) -> np.ndarray:
        return self.a_len + self.b_len + 3


def chunk_documents(cache: TokenCache, doc_ids: np.ndarray, budget: int, min_len: int = 4) -> tuple[np.ndarray, ...]:
    """Cut documents into chunks of ``budget`` tokens: (chunk start, chunk length, chunk's doc index in doc_ids)."""
    starts_all = cache.doc_starts
    ds, de = starts_all[doc_ids], starts_all[doc_ids + 1]
    counts = np.maximum(0, -(-(de - ds) // budget))
    owner = np.repeat(np.arange(len(doc_ids)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(len(owner)) - first
    start = ds[owner] + k * budget
    length = np.minimum(budget, de[owner] - start)
    keep = length >= min_len
    return start[keep], length[keep], owner[keep]


def make_instances(cache: TokenCache, doc_ids: np.ndarray, seq_len: int, rng: np.random.Generator) -> Instances:
    """Vectorized NSP pair sampling over all chunks (one call per epoch; no per-token Python)."""
    budget = seq_len - 3
    start, length, owner = chunk_documents(cache, doc_ids, budget)
    n = len(start)
    lines = cache.line_starts
    # split point, snapped to the closest line boundary strictly inside the chunk
    pos = start + rng.integers(1, length)
    nxt_i = np.minimum(np.searchsorted(lines, pos, side="left"), len(lines) - 1)
    prv_i = np.maximum(nxt_i - 1, 0)
    nxt, prv = lines[nxt_i], lines[prv_i]
    inside = lambda p: (p > start) & (p < start + length)
    use_prv = inside(prv) & (~inside(nxt) | (pos - prv <= nxt - pos))
    use_nxt = inside(nxt) & ~use_prv
    pos = np.where(use_prv, prv, np.where(use_nxt, nxt, pos))
    a_len = pos - start
    b_len = length - a_len
    # random B from another document, starting at a line boundary
    n_docs = len(doc_ids)
    is_random = (rng.random(n) < 0.5) & (n_docs > 1)
    other = rng.integers(0, max(1, n_docs - 1), n)
    other = other + (other >= owner)
    other = np.minimum(other, n_docs - 1)
    os_, oe = cache.doc_starts[doc_ids[other]], cache.doc_starts[doc_ids[other] + 1]
    room = np.maximum(1, oe - os_ - b_len + 1)
    guess = os_ + (rng.random(n) * room).astype(np.int64)
    line_start = lines[np.maximum(np.searchsorted(lines, guess, side="right") - 1, 0)]
    r_start = np.maximum(line_start, os_)
    r_len = np.maximum(1, np.minimum(b_len, oe - r_start))
    return Instances(
        a_start=start,
        a_len=a_len,
        b_start=np.where(is_random, r_start, pos),
        b_len=np.where(is_random, r_len, b_len),
        nsp_label=is_random.astype(np.int64),
    )


class MlmNspBatches:
    """Deterministic batches of (epoch, index): fresh pairs each epoch, fresh masks each batch."""

    def __init__(self, cache: TokenCache, doc_ids: np.ndarray, tokenizer, seq_len: int, batch_size: int,
                 mask_prob: float, seed: int, vocab_size: int) -> None:
        self.cache, self.doc_ids, self.seq_len, self.batch_size = cache, doc_ids, seq_len, batch_size
        self.mask_prob, self.seed, self.vocab_size = mask_prob, seed, vocab_size
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.max_predictions = max(1, math.ceil(mask_prob * (seq_len - 3)))
        self._count = len(make_instances(cache, doc_ids, seq_len, np.random.default_rng(0)))

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' instances, alive as long as the batch source itself
    def _epoch(self, epoch: int) -> tuple[Instances, list[np.ndarray]]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        inst = make_instances(self.cache, self.doc_ids, self.seq_len, rng)
        return inst, length_grouped_batches(inst.lengths, self.batch_size, rng)

    def num_batches(self, epoch: int) -> int:
        return -(-self._count // self.batch_size)

    def batch(self, epoch: int, index: int) -> dict:
        import torch

        inst, batches = self._epoch(epoch)
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF)
        return self.build(inst, batches[index], generator)

    def build(self, inst: Instances, rows: np.ndarray, generator) -> dict:
        import torch

        tokens = self.cache.tokens
        width = int(inst.lengths[rows].max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            a0, la, b0, lb = inst.a_start[i], inst.a_len[i], inst.b_start[i], inst.b_len[i]
            ids[r, 0] = self.cls_id
            ids[r, 1 : 1 + la] = tokens[a0 : a0 + la]
            ids[r, 1 + la] = self.sep_id
            ids[r, 2 + la : 2 + la + lb] = tokens[b0 : b0 + lb]
            ids[r, 2 + la + lb] = self.sep_id
            types[r, 2 + la : 3 + la + lb] = 1
        input_ids = torch.from_numpy(ids)
        batch = {"input_ids": input_ids, "token_type_ids": torch.from_numpy(types)}
        lengths = torch.from_numpy(inst.lengths[rows].astype(np.int64))
        if int(lengths.min()) < width:  # only pay for a mask when there is padding
            batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        batch.update(self.mask(input_ids, lengths, generator))
        batch["next_sentence_label"] = torch.from_numpy(inst.nsp_label[rows])
        return batch

    def mask(self, input_ids, lengths, generator) -> dict:
        """Choose ``round(p * real tokens)`` positions per row; 80/10/10 replacement. Modifies input_ids in place."""
        import torch

        batch, width = input_ids.shape
        special = (input_ids == self.cls_id) | (input_ids == self.sep_id) | (input_ids == self.pad_id)
        scores = torch.rand(batch, width, generator=generator)  # [B, T]
        scores[special] = -1.0
        k = min(self.max_predictions, width)
        positions = scores.topk(k, dim=1).indices  # [B, P] random real positions first
        real = (lengths - 3).clamp(min=1)
        n_mask = torch.clamp(torch.round(real.float() * self.mask_prob).long(), min=1)  # [B]
        valid = torch.arange(k)[None, :] < n_mask[:, None]  # [B, P]
        original = input_ids.gather(1, positions)  # [B, P]
        labels = torch.where(valid, original, torch.full_like(original, -100))
        roll = torch.rand(batch, k, generator=generator)
        random_tokens = torch.randint(0, self.vocab_size, (batch, k), generator=generator)
        replaced = torch.where(valid & (roll < 0.8), torch.full_like(original, self.mask_id), original)
        replaced = torch.where(valid & (roll >= 0.8) & (roll < 0.9), random_tokens, replaced)
        input_ids.scatter_(1, positions, replaced)
        return {"masked_positions": positions, "masked_labels": labels}


def evaluation_batches(source: MlmNspBatches, max_sequences: int) -> list[dict]:
    """A fixed held-out set (fixed pairs and masks), so every evaluation scores the same thing."""
    import torch

    inst = make_instances(source.cache, source.doc_ids, source.seq_len, np.random.default_rng(4321))
    keep = np.random.default_rng(4321).permutation(len(inst))[:max_sequences]
    keep = keep[np.argsort(-inst.lengths[keep], kind="stable")]
    generator = torch.Generator().manual_seed(4321)
    return [source.build(inst, keep[i : i + source.batch_size], generator)
            for i in range(0, len(keep), source.batch_size)]


def score(model, batches: list[dict]) -> dict[str, float]:
    """Held-out MLM loss, perplexity and accuracy on the masked positions, and NSP accuracy."""
    import torch

    device = next(model.parameters()).device
    mlm_loss_sum = mlm_correct = mlm_count = nsp_correct = nsp_count = nsp_loss_sum = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            out = model(**batch)
        labels = batch["masked_labels"]
        valid = labels != -100
        n = int(valid.sum())
        mlm_loss_sum += float(out.mlm_loss) * n
        mlm_correct += int(((out.mlm_logits.argmax(-1) == labels) & valid).sum())
        mlm_count += n
        b = len(batch["next_sentence_label"])
        nsp_loss_sum += float(out.nsp_loss) * b
        nsp_correct += int((out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
        nsp_count += b
    mlm_loss = mlm_loss_sum / max(1, mlm_count)
    return {
        "loss": mlm_loss + nsp_loss_sum / max(1, nsp_count),
        "mlm_loss": mlm_loss,
        "perplexity": math.exp(min(mlm_loss, 50.0)),
        "mlm_accuracy": mlm_correct / max(1, mlm_count),
        "nsp_accuracy": nsp_correct / max(1, nsp_count),
    }


def _check_tokenizer(tokenizer, where: str) -> None:
    missing = [name for name in ("mask_token", "cls_token", "sep_token", "pad_token") if getattr(tokenizer, name) is None]
    if missing:
        raise ModelLoadError(
            f"tokenizer {where} has no {', '.join(missing)}; MLM+NSP needs BERT's special tokens",
            fix="train one with `lmforge tokenizer train --kind wordpiece`, or use a BERT tokenizer",
        )


def load_corpus(config: MlmNspConfig, tokenizer) -> tuple[TokenCache, np.ndarray, np.ndarray, list[Path]]:
    files = corpus_files(config.corpus)
    cache = token_cache(tokenizer, files)
    train_docs, eval_docs = split_documents(cache, config.eval_fraction)
    corpus_name = ", ".join(config.corpus)
    sizes = np.diff(cache.doc_starts)
    train_tokens = int(sizes[train_docs].sum())
    needed = config.seq_len * config.train.batch_size
    if train_tokens < needed:
        raise DataError(
            f"corpus {corpus_name} is too small for seq_len {config.seq_len}: {train_tokens:,} training tokens, "
            f"but one batch of {config.train.batch_size} sequences needs {needed:,}",
            fix="add text, or lower --set seq_len=N / --set train.batch_size=N",
        )
    return cache, train_docs, eval_docs, files


def prepare_pretraining(config: MlmNspConfig):
    """Validate inputs, build the token cache, the run dir and the model: everything but the training itself."""
    from transformers import BertForPreTraining

    from lmforge.models import build_bert_pretraining
    from lmforge.training.loop import TaskSpec
    from lmforge.training.objectives import MaskedPositionsPretraining

    tokenizer, tokenizer_spec = resolve_tokenizer(config)
    _check_tokenizer(tokenizer, tokenizer_spec)
    cache, train_docs, eval_docs, files = load_corpus(config, tokenizer)
    if len(train_docs) < 2:
        raise DataError(
            f"corpus {', '.join(config.corpus)} has {cache.n_docs} document(s); next-sentence prediction needs at "
            "least two (besides the held-out ones)",
            fix="separate documents with a blank line, or add documents",
        )
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    model, n_params = start_model(config, run, tokenizer, tokenizer_spec, BertForPreTraining,
                                  lambda: build_bert_pretraining(config.size, tokenizer, config.seq_len, config.arch),
                                  corpus_info(files, cache, eval_docs))
    batches = lambda docs: MlmNspBatches(cache, docs, tokenizer, config.seq_len, config.train.batch_size,
                                         config.mask_prob, config.train.seed, model.config.vocab_size)
    eval_batches = evaluation_batches(batches(eval_docs), config.max_eval_sequences) if len(eval_docs) else None
    log.info("pretraining %s (%.1fM parameters) on %s tokens in %d documents",
             config.init or config.size, n_params / 1e6, f"{cache.n_tokens:,}", cache.n_docs)
    spec = TaskSpec(
        name="pretrain mlm-nsp",
        model=MaskedPositionsPretraining(model),
        train_data=batches(train_docs),
        save_model=hf_saver(tokenizer, unwrap=lambda wrapper: wrapper.model),
        evaluate=(lambda m: score(m, eval_batches)) if eval_batches else None,
        count_tokens=lambda b: int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel(),
        eval_times=10,
        eval_size=sum(len(b["input_ids"]) for b in eval_batches or []),
    )
    return spec, run, {"parameters": n_params}


pretrain_mlm_nsp = training_stage(prepare_pretraining, "Pretrain a BERT (MLM + NSP); returns the run summary.")


def evaluate_mlm_nsp(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """Score a pretraining run on held-out text: the run's own held-out documents, or all of ``options.data``."""
    from transformers import BertForPreTraining

    from lmforge.training.objectives import MaskedPositionsPretraining

    config = run_config(MlmNspConfig, info)
    tokenizer, model = load_run_model(run, BertForPreTraining)
    if options.data:
        cache = token_cache(tokenizer, corpus_files([options.data]))
        docs = np.arange(cache.n_docs)
    else:
        cache, _, docs, _ = load_corpus(config, tokenizer)
    source = MlmNspBatches(cache, docs, tokenizer, config.seq_len, config.train.batch_size, config.mask_prob,
                           config.train.seed, model.config.vocab_size)
    wrapper = MaskedPositionsPretraining(model).eval()
    return {"data": options.data or "held-out documents",
            **score(wrapper, evaluation_batches(source, config.max_eval_sequences))}


TASK = register(Task(
    name="mlm-nsp", stage="pretrain", config=MlmNspConfig, train=pretrain_mlm_nsp, evaluate=evaluate_mlm_nsp,
    summary="BERT-style encoder: masked language modeling + next-sentence prediction on packed sequences",
    pipeline="fill-mask", routes=("embeddings",), architectures=("ForPreTraining", "ForMaskedLM"),
    metrics=("mlm_accuracy", "perplexity", "nsp_accuracy", "loss"),
))
