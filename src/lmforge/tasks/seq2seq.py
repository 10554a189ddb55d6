"""Sequence-to-sequence fine-tuning, shared by translation and summarization (each a task module of its own).

Three kinds of model, told apart by the model itself (:func:`lmforge.models.text2text_family`):

- an encoder-decoder (a span-corruption run, any Hugging Face seq2seq folder) learns the pairs as they are;
- a decoder-only causal LM (``smollm2``, a CLM run) learns each pair as a chat exchange: the instruction and the source
  asked by the user, the target answered, the loss on the answer only (a model without a chat template gets ChatML);
  ``--lora`` trains adapters instead of every weight;
- an encoder (``minilm``, an MLM run) warm-starts both halves of an ``EncoderDecoderModel`` (BERT2BERT).

Pairs are tokenized once and batched by length; the dev loss (teacher-forced) picks the checkpoint kept in
``RUN/model``. Evaluation generates with the run's decoding settings (beam search by default) and scores against the
references.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from pydantic import Field, model_validator

from lmforge.config import FinetuneConfig, LoraSettings, Strict, TrainConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.data.conversations import Pairs, load_pairs
from lmforge.errors import ConfigError, LmforgeError
from lmforge.rundir import RunDir
from lmforge.tasks.common import bundled_dev_split, data_info, hf_saver
from lmforge.tasks.registry import EvalOptions

log = logging.getLogger("lmforge")

# peak learning rates by model family when --lr is not given (a decoder's come from lmforge.tasks.lm: 2e-4 with LoRA,
# else 5e-5): an encoder-decoder pretrained here is small and takes a brisk rate; BERT2BERT's cross-attention starts
# from scratch beside pretrained weights
FAMILY_LR = {"encoder-decoder": 3e-4, "encoder": 1e-4}
DECODER_MICRO_BATCH = 8  # pairs per micro-batch for a causal LM when neither --batch-size nor train.grad_accum is given
DEV_PAIRS = 512  # dev pairs scored at each evaluation (teacher-forced loss)
# a causal LM reads prompt and answer in full for every dev pair (~1 pair a second for smollm2 on one CPU core)
DEV_PAIRS_DECODER = 128
DEV_GENERATED = 64  # of them, the first pairs also translated/summarized (greedy) for the task's metric


class DecodingSettings(Strict):
    """How outputs are generated (evaluation, predict, the server)."""

    num_beams: int = Field(4, ge=1, le=32, description="beam width (1: greedy)", json_schema_extra={"flag": "--num-beams"})
    length_penalty: float = Field(1.0, description="beam scores are divided by length ** this (above 1 favours longer)")
    no_repeat_ngram_size: int = Field(0, ge=0, description="never repeat an n-gram of this size (0: off)")
    max_new_tokens: int = Field(128, ge=1, description="longest output, in tokens")
    do_sample: bool = Field(False, description="sample tokens instead of taking the likeliest (with beams: beam "
                            "sampling)")
    temperature: float = Field(1.0, gt=0, description="sampling: divide the logits by this (below 1: safer)")
    top_p: float = Field(1.0, gt=0, le=1, description="sampling: only from the likeliest tokens holding this much "
                         "probability")
    top_k: int = Field(0, ge=0, description="sampling: only from the k likeliest tokens (0: off)")


class Seq2SeqTrainConfig(TrainConfig):
    epochs: float | None = Field(3, gt=0, description="passes over the training data (fractions allowed)")
    lr: float | None = Field(None, gt=0, description="peak learning rate (AdamW; default by the model: 3e-4 for an "
                             "encoder-decoder, 1e-4 for BERT2BERT, a decoder 2e-4 with --lora else 5e-5)")


class Seq2SeqConfig(FinetuneConfig):
    model: str = Field(description="an encoder-decoder (a span-corruption run, an HF seq2seq folder), a causal LM "
                       "(smollm2, a CLM run: prompted with --instruction) or an encoder (minilm, an MLM run: "
                       "BERT2BERT)")
    source_field: str = Field("text", description="field holding the input text")
    target_field: str = Field("target", description="field holding the output text")
    prefix: str = Field("", description="encoder-decoders: text put before every input (e.g. 'translate English to "
                        "Spanish: ' for models trained with task prefixes)")
    instruction: str | None = Field(None, description="causal LMs: what the user asks before the input (default: "
                                    "the task's)")
    max_source_length: int = Field(256, ge=8, description="input tokens kept")
    max_target_length: int = Field(128, ge=4, description="output tokens learned")
    random_init: bool = Field(False, description="encoder-decoders: keep the model's architecture and tokenizer but "
                              "start from random weights (the baseline that shows what pretraining gave)",
                              json_schema_extra={"flag": "--random-init"})
    decoding: DecodingSettings = Field(default_factory=DecodingSettings, description="generation")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="causal LMs: low-rank adaptation")
    train: Seq2SeqTrainConfig = Field(default_factory=Seq2SeqTrainConfig, description="training loop")

    def task_instruction(self) -> str:
        """What a causal LM is asked when --instruction is not given (each task says)."""
        return "Rewrite this text."

    def prompt_labels(self) -> tuple[str, str]:
        """How a few-shot prompt names the input and the output (each task says)."""
        return "Text", "Output"

    def dev_metric(self, outputs: list[str], targets: list[str]) -> dict[str, float]:
        """The task's headline metric of greedy outputs on dev pairs, logged at each evaluation during training
        (so a run's metrics.jsonl is its own learning curve: metric vs training time)."""
        return {}

    @model_validator(mode="after")
    def _instruction(self):
        self.instruction = self.instruction or self.task_instruction()
        return self


def task_settings(config_cls: type[Seq2SeqConfig], info: dict, task: str) -> Seq2SeqConfig:
    """A ``task`` run's config; for any other model (zero-shot: smollm2, a CLM run), the task's defaults."""
    own = info.get("config") if info.get("task") == task else None
    raw = {k: v for k, v in (own or {}).items() if k in config_cls.model_fields}
    return config_cls.model_validate({"model": "-", "data": "", "out": "-", **raw})


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


def split_pairs(config: Seq2SeqConfig) -> tuple[Pairs, Pairs]:
    """The training pairs and the dev pairs (the bundled dev split, --eval, or a held-out share)."""
    train = load_pairs(config.data, config.source_field, config.target_field)
    dev_spec = bundled_dev_split(config.data, config.eval)
    if dev_spec:
        return train, load_pairs(dev_spec, config.source_field, config.target_field)
    order = np.random.default_rng(config.train.seed).permutation(len(train))
    cut = max(1, int(len(train) * config.dev_fraction))
    pick = lambda idx, name: Pairs(name, [train.sources[i] for i in idx], [train.targets[i] for i in idx],
                                   train.files)
    return (pick(sorted(order[cut:]), train.spec),
            pick(sorted(order[:cut]), f"{config.data} (held-out {config.dev_fraction:.0%})"))


def prepare_seq2seq(config: Seq2SeqConfig, task: str):
    """Validate, read and tokenize the pairs, write the run's config, build the model: everything but training."""
    from lmforge.models import load_tokenizer, resolve_model_path, text2text_family
    from lmforge.training.loop import seed_everything

    resolve_model_path(config.model)
    family = text2text_family(config.model)
    if config.random_init and family != "encoder-decoder":
        raise ConfigError(f"--random-init starts an encoder-decoder from random weights; {config.model} is an "
                          f"{family}", where="--random-init", fix="drop --random-init, or give an encoder-decoder "
                          "(a span-corruption run, an HF seq2seq folder)")
    if config.lora.enabled and family != "decoder":
        raise ConfigError(f"--lora adapts causal LMs here; {config.model} is an {family}", where="--lora",
                          fix="drop --lora (every weight is trained), or fine-tune a causal LM such as smollm2")
    train, dev = split_pairs(config)
    tokenizer = load_tokenizer(config.model)
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    if config.train.lr is None and family in FAMILY_LR:
        config.train.lr = FAMILY_LR[family]
    if (family == "decoder" and not {"batch_size", "grad_accum"} & config.train.model_fields_set
            and len(train) >= 64):  # (fewer pairs would not fill the accumulation steps of an epoch)
        # a causal LM reads prompt and answer as one sequence of up to ~640 tokens: 32 of them in one micro-batch
        # took 19 GB for smollm2; the same pairs a step (the default batch), in micro-batches of 8
        config.train.batch_size, config.train.grad_accum = (DECODER_MICRO_BATCH,
                                                            config.train.batch_size // DECODER_MICRO_BATCH)
    seed_everything(config.train.seed)
    spec = (_decoder_spec if family == "decoder" else _pairs_spec)(config, task, family, train, dev, tokenizer)
    run.write_info(stage="finetune", task=task, config=config,
                   extra={"family": family,
                          "data": {"train": data_info(train.spec, train.files, pairs=len(train)),
                                   "dev": data_info(dev.spec, dev.files, pairs=len(dev))}})
    return spec, run, {}


def _pairs_spec(config: Seq2SeqConfig, task: str, family: str, train: Pairs, dev: Pairs, tokenizer):
    """An encoder-decoder (or BERT2BERT) learning the pairs as they are."""
    from transformers import AutoModelForSeq2SeqLM

    from lmforge.inference.pipelines import generate_texts
    from lmforge.models import build_bert2bert, calm_t5_head, from_pretrained, load_config
    from lmforge.tasks.lm import score_seq2seq
    from lmforge.training.loop import TaskSpec

    if family == "encoder":
        model = build_bert2bert(config.model, tokenizer)
    elif config.random_init:
        model = calm_t5_head(AutoModelForSeq2SeqLM.from_config(load_config(config.model)))
    else:
        model = from_pretrained(AutoModelForSeq2SeqLM, config.model)
    eos = next(t for t in (tokenizer.eos_token_id, tokenizer.sep_token_id, model.config.eos_token_id) if t is not None)

    def encode(pairs: Pairs) -> tuple[list[list[int]], list[list[int]]]:
        sources = tokenizer([config.prefix + s for s in pairs.sources], truncation=True,
                            max_length=config.max_source_length)["input_ids"]
        # every target ends with the end of text, or the model never learns to stop; the decoder's start token is
        # the model's to add (it shifts the labels right)
        targets = tokenizer(text_target=pairs.targets, add_special_tokens=False, truncation=True,
                            max_length=config.max_target_length - 1)["input_ids"]
        return sources, [[*t, eos] for t in targets]

    train_ids, dev_ids = encode(train), encode(dev)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev_batches = [collate(dev_ids[0][i : i + 32], dev_ids[1][i : i + 32], pad_id)
                   for i in range(0, min(len(dev), DEV_PAIRS), 32)]
    shown = head(dev, DEV_GENERATED)

    greedy = {"num_beams": 1, "do_sample": False, "max_new_tokens": config.max_target_length}

    scores_outputs = type(config).dev_metric is not Seq2SeqConfig.dev_metric  # a task without one generates nothing

    def evaluate(m) -> dict[str, float]:
        scores = score_seq2seq(m, dev_batches)
        if scores_outputs:
            outputs = generate_texts(m, tokenizer, dev_ids[0][:DEV_GENERATED], greedy, batch_size=32)
            scores.update(config.dev_metric(outputs, shown.targets))
        return scores

    return TaskSpec(
        name=f"finetune {task}", model=model,
        train_data=PairBatches(*train_ids, config.train.batch_size, config.train.seed, pad_id),
        save_model=hf_saver(tokenizer), evaluate=evaluate, best_metric="loss",
        greater_is_better=False, count_tokens=lambda b: int(b["attention_mask"].sum() + (b["labels"] != -100).sum()),
        eval_times=10, eval_size=min(len(dev), DEV_PAIRS),
    )


def _decoder_spec(config: Seq2SeqConfig, task: str, family: str, train: Pairs, dev: Pairs, tokenizer):
    """A causal LM learning each pair as a chat exchange, the loss on the answer only."""
    from lmforge.data.chat_format import (
        ChatBatches,
        as_exchange,
        conversation_batches,
        encode_conversation,
        ensure_chat_tokens,
        source_cutter,
        stop_on_turn_end,
    )
    from lmforge.tasks.lm import lm_objective, load_decoder, score_lm
    from lmforge.training.loop import TaskSpec

    decoder = load_decoder(config, tokenizer, prepare_tokenizer=ensure_chat_tokens)
    stop_on_turn_end(decoder.model, tokenizer)
    cut = source_cutter(tokenizer, config.max_source_length)
    longest = config.max_source_length + config.max_target_length + 64  # the template's markers and the instruction

    def encode(pairs: Pairs) -> list[tuple[list[int], list[int]]]:
        return [encode_conversation(tokenizer, as_exchange(config.instruction, cut(s), t), longest)
                for s, t in zip(pairs.sources, pairs.targets)]

    train_enc, dev_enc = encode(train), encode(head(dev, DEV_PAIRS_DECODER))
    pad_id = tokenizer.pad_token_id
    max_tokens = config.train.batch_size * longest
    dev_batches = conversation_batches(dev_enc, config.train.batch_size, pad_id, max_tokens)
    return TaskSpec(
        name=f"finetune {task}", model=lm_objective(decoder.model),
        train_data=ChatBatches(train_enc, config.train.batch_size, config.train.seed, pad_id, max_tokens),
        save_model=decoder.save, evaluate=lambda wrapper: score_lm(wrapper.model, dev_batches), best_metric="loss",
        greater_is_better=False, count_tokens=lambda b: int(b["attention_mask"].sum()), eval_times=10,
        eval_size=len(dev_enc),
    )


def head(pairs: Pairs, count: int) -> Pairs:
    """The first ``count`` pairs."""
    return Pairs(pairs.spec, pairs.sources[:count], pairs.targets[:count], pairs.files)


def generate(run: RunDir, info: dict, settings: Seq2SeqConfig, pairs: Pairs, options: EvalOptions,
             default_data: str) -> list[str]:
    """The run's outputs for the pairs' sources, decoded as its config says (a base decoder: few-shot, greedy)."""
    from lmforge.inference.pipelines import Seq2SeqPipeline

    pipeline = Seq2SeqPipeline(run.model_dir, info=info, instruction=settings.instruction,
                               few_shot=few_shot(settings, default_data, options.data))
    return [r["text"] for r in pipeline.predict(pairs.sources, batch_size=min(options.batch_size, 32),
                                                shots=options.shots, **settings.decoding.model_dump())]


def few_shot(settings: Seq2SeqConfig, default_data: str, data: str | None = None):
    """The examples a base decoder is shown (:class:`lmforge.inference.pipelines.FewShot`, which picks the nearest
    for each text): training pairs of the task, never of the split being scored: the train split of ``data``'s
    bundled dataset, else the data the run trained on, else the task's bundled ``default_data``. Pairs with an
    input over twice the median length are left out, so prompts stay short."""
    from lmforge.data.readers import resolve
    from lmforge.inference.pipelines import FewShot

    source = resolve(data) if data else None
    if source is not None and source.bundled is not None and "train" in source.bundled.splits:
        spec = f"{source.bundled.name}:train"
    else:
        spec = settings.data or f"{default_data}:train"
    pairs = load_pairs(spec, settings.source_field, settings.target_field)
    lengths = np.asarray([len(s) for s in pairs.sources])
    cap = 2 * float(np.median(lengths))
    return FewShot(*settings.prompt_labels(), [(s, t) for s, t, n in zip(pairs.sources, pairs.targets, lengths)
                                               if n <= cap and t.strip()])


def eval_pairs(settings: Seq2SeqConfig, options: EvalOptions, default_split: str) -> Pairs:
    """The pairs to score: --data (fields as --text-field/--label-field say, else the run's), or the split of the
    bundled data the run was trained on."""
    from lmforge.data.registry import lookup, split_spec

    name = split_spec(settings.data)[0] if settings.data else ""
    if options.data is None and (not name or lookup(name) is None):
        raise LmforgeError("evaluating this model needs data", where="--data",
                           fix="give a file (or bundled name:split) with source and target fields, "
                               "e.g. --data translation:test")
    data = options.data or f"{name}:{default_split}"
    pairs = load_pairs(data, options.text_field or settings.source_field, options.label_field or settings.target_field)
    return head(pairs, options.limit) if options.limit else pairs


def examples(pairs: Pairs, outputs: list[str], count: int = 5) -> list[dict]:
    return [{"source": s, "reference": t, "output": o} for s, t, o in zip(pairs.sources, pairs.targets, outputs)][:count]
