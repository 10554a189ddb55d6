"""Sequence-to-sequence fine-tuning, shared by translation and summarization (each a task module of its own).

The model is an encoder-decoder: a span-corruption run or any Hugging Face seq2seq folder. Pairs are tokenized once,
batched by length (source padding only where lengths differ, target padding ignored by the loss), and the dev loss
(teacher-forced) picks the checkpoint kept in ``RUN/model``. Evaluation generates with the run's decoding settings
(beam search by default) and scores against the references.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from pydantic import Field

from lmforge.config import FinetuneConfig, Strict, TrainConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.data.conversations import Pairs, load_pairs
from lmforge.errors import LmforgeError, ModelLoadError
from lmforge.rundir import RunDir
from lmforge.tasks.common import bundled_dev_split, data_info, hf_saver
from lmforge.tasks.registry import EvalOptions

log = logging.getLogger("lmforge")


class DecodingSettings(Strict):
    """How outputs are generated (evaluation, predict, the server)."""

    num_beams: int = Field(4, ge=1, le=32, description="beam width (1: greedy)", json_schema_extra={"flag": "--num-beams"})
    length_penalty: float = Field(1.0, description="beam scores are divided by length ** this (above 1 favours longer)")
    no_repeat_ngram_size: int = Field(0, ge=0, description="never repeat an n-gram of this size (0: off)")
    max_new_tokens: int = Field(128, ge=1, description="longest output, in tokens")


class Seq2SeqTrainConfig(TrainConfig):
    epochs: float | None = Field(3, gt=0, description="passes over the training data (fractions allowed)")


class Seq2SeqConfig(FinetuneConfig):
    model: str = Field(description="an encoder-decoder: a span-corruption run (lmforge pretrain --objective "
                       "span-corruption) or a Hugging Face seq2seq folder or hub id")
    source_field: str = Field("text", description="field holding the input text")
    target_field: str = Field("target", description="field holding the output text")
    prefix: str = Field("", description="text put before every input (e.g. 'translate English to Spanish: ' for "
                        "models trained with task prefixes)")
    max_source_length: int = Field(256, ge=8, description="input tokens kept")
    max_target_length: int = Field(128, ge=4, description="output tokens learned")
    decoding: DecodingSettings = Field(default_factory=DecodingSettings, description="generation")
    train: Seq2SeqTrainConfig = Field(default_factory=Seq2SeqTrainConfig, description="training loop")


class PairBatches:
    """Length-grouped batches of (source, target) token lists: padded sources, targets padded with -100."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]], batch_size: int, seed: int,
                 pad_id: int) -> None:
        self.sources, self.targets = sources, targets
        self.lengths = np.asarray([len(s) + len(t) for s, t in zip(sources, targets)])
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders, alive as long as the batch source itself
    def _order(self, epoch: int) -> list[np.ndarray]:
        return length_grouped_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch]))

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.sources) // self.batch_size)

    def batch(self, epoch: int, index: int) -> dict:
        return collate([self.sources[i] for i in self._order(epoch)[index]],
                       [self.targets[i] for i in self._order(epoch)[index]], self.pad_id)


def collate(sources: list[list[int]], targets: list[list[int]], pad_id: int) -> dict:
    from lmforge.data.batching import pad_batch

    ids, mask = pad_batch(sources, pad_id)
    labels, label_mask = pad_batch(targets, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(label_mask == 0, -100)}


def check_encoder_decoder(spec: str) -> None:
    from lmforge.models import load_config

    if not getattr(load_config(spec), "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{spec} is not an encoder-decoder; this version fine-tunes translation and summarization on "
            "encoder-decoders only", where="--model",
            fix="pretrain one with `lmforge pretrain --objective span-corruption`, or use a Hugging Face seq2seq "
                "folder (T5, BART, ...)")


def prepare_seq2seq(config: Seq2SeqConfig, task: str):
    """Validate, read and tokenize the pairs, write the run's config, build the model: everything but training."""
    from transformers import AutoModelForSeq2SeqLM

    from lmforge.models import from_pretrained, load_tokenizer, resolve_model_path
    from lmforge.tasks.pretrain_span import score_seq2seq
    from lmforge.training.loop import TaskSpec, seed_everything

    resolve_model_path(config.model)
    check_encoder_decoder(config.model)
    train = load_pairs(config.data, config.source_field, config.target_field)
    dev_spec = bundled_dev_split(config.data, config.eval)
    if dev_spec:
        dev = load_pairs(dev_spec, config.source_field, config.target_field)
    else:
        order = np.random.default_rng(config.train.seed).permutation(len(train))
        cut = max(1, int(len(train) * config.dev_fraction))
        pick = lambda idx, name: Pairs(name, [train.sources[i] for i in idx], [train.targets[i] for i in idx],
                                       train.files)
        train, dev = (pick(sorted(order[cut:]), train.spec),
                      pick(sorted(order[:cut]), f"{config.data} (held-out {config.dev_fraction:.0%})"))
    tokenizer = load_tokenizer(config.model)
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    run.write_info(stage="finetune", task=task, config=config,
                   extra={"data": {"train": data_info(train.spec, train.files, pairs=len(train)),
                                   "dev": data_info(dev.spec, dev.files, pairs=len(dev))}})
    seed_everything(config.train.seed)
    model = from_pretrained(AutoModelForSeq2SeqLM, config.model)

    def encode(pairs: Pairs) -> tuple[list[list[int]], list[list[int]]]:
        sources = tokenizer([config.prefix + s for s in pairs.sources], truncation=True,
                            max_length=config.max_source_length)["input_ids"]
        targets = tokenizer(text_target=pairs.targets, truncation=True, max_length=config.max_target_length - 1)
        # every target ends with the end of text, or the model never learns to stop (T5's tokenizer appends it;
        # a GPT-style one does not)
        return sources, [t if t and t[-1] == eos else [*t, eos] for t in targets["input_ids"]]

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    train_ids, dev_ids = encode(train), encode(dev)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev_batches = [collate(dev_ids[0][i : i + 32], dev_ids[1][i : i + 32], pad_id)
                   for i in range(0, min(len(dev), 512), 32)]
    spec = TaskSpec(
        name=f"finetune {task}", model=model,
        train_data=PairBatches(*train_ids, config.train.batch_size, config.train.seed, pad_id),
        save_model=hf_saver(tokenizer), evaluate=lambda m: score_seq2seq(m, dev_batches), best_metric="loss",
        greater_is_better=False, count_tokens=lambda b: int(b["attention_mask"].sum() + (b["labels"] != -100).sum()),
        eval_times=10, eval_size=min(len(dev), 512),
    )
    return spec, run, {}


def generate(run: RunDir, info: dict, sources: list[str], batch_size: int) -> list[str]:
    """The run's outputs for ``sources``, decoded as its config says."""
    from lmforge.inference.pipelines import Seq2SeqPipeline

    pipeline = Seq2SeqPipeline(run.model_dir, info=info)
    return [r["text"] for r in pipeline.predict(sources, batch_size=min(batch_size, 32))]


def eval_pairs(info: dict, options: EvalOptions, default_split: str) -> Pairs:
    from lmforge.data.registry import lookup, split_spec

    config = info.get("config") or {}
    name = split_spec(config.get("data") or "")[0]
    if options.data is None and lookup(name) is None:
        raise LmforgeError("evaluating this run needs data", where="--data",
                           fix="give a file with the run's source and target fields, e.g. --data test.jsonl")
    data = options.data or f"{name}:{default_split}"
    pairs = load_pairs(data, options.text_field or config.get("source_field", "text"),
                       options.label_field or config.get("target_field", "target"))
    if options.limit:
        pairs = Pairs(pairs.spec, pairs.sources[: options.limit], pairs.targets[: options.limit], pairs.files)
    return pairs


def examples(pairs: Pairs, outputs: list[str], count: int = 5) -> list[dict]:
    return [{"source": s, "reference": t, "output": o} for s, t, o in zip(pairs.sources, pairs.targets, outputs)][:count]
