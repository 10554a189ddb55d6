"""Extractive question answering (SQuAD v1.1): find the answer to a question as a span of its context.

Any BERT-style encoder (``minilm``, an MLM run, an HF folder with a fast tokenizer) gets a span head
(``AutoModelForQuestionAnswering``: a start and an end logit per token). Questions and contexts are tokenized once up
front into windows of ``max_length`` tokens (a long context is read in overlapping windows sharing ``stride`` tokens,
see :mod:`lmforge.data.qa_windows`); each window learns where its example's answer starts and ends, or the [CLS]
position when the answer is not inside it. Dev data is scored during training with the official SQuAD v1.1 EM and F1
(n-best span decoding over all windows of a question, :mod:`lmforge.inference.extractive_qa`), and the checkpoint
with the best dev F1 is kept in ``RUN/model``.

Data: SQuAD v1.1 JSON (train-v1.1.json / dev-v1.1.json) or JSON Lines with question, context and answers
(:mod:`lmforge.data.squad`). The bundled ``squad-sample`` (11 questions) only checks that things run: bring real SQuAD
files for a useful model.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np
from pydantic import Field

from lmforge.config import FinetuneConfig, TrainConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.rundir import RunDir
from lmforge.tasks.common import bundled_dev_split, data_info, hf_saver, training_stage
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")
SHOWN_EXAMPLES = 5  # questions eval.json and the report show with their predictions


class QATrainConfig(TrainConfig):
    epochs: float | None = Field(2, gt=0, description="passes over the training data (fractions allowed)")
    batch_size: int = Field(32, ge=1, description="windows per device per micro-batch")


class FinetuneQAConfig(FinetuneConfig):
    data: str = Field(description="training questions: SQuAD v1.1 JSON (e.g. train-v1.1.json), JSON Lines with "
                      "question, context and answers, or squad-sample (11 questions: a smoke check only; bring real "
                      "SQuAD files for a useful model)")
    eval: str | None = Field(None, description="dev questions, same formats (default: a held-out share of the "
                             "training contexts, with all their questions)")
    max_length: int = Field(384, ge=32, description="tokens per window: question, context and special tokens (up to "
                            "the model's limit, e.g. 512 for minilm)")
    stride: int = Field(128, ge=0, description="context tokens neighbouring windows share when a context is longer "
                        "than one window (at most half of max_length)")
    max_answer_length: int = Field(30, ge=1, description="longest answer in tokens, when decoding spans")
    n_best: int = Field(20, ge=1, description="start and end candidates per window paired when decoding spans")
    train: QATrainConfig = Field(default_factory=QATrainConfig, description="training loop")


class WindowBatches:
    """Length-grouped, dynamically padded batches of windows with their answer positions; batch ``(epoch, i)`` is
    deterministic."""

    def __init__(self, windows, starts: np.ndarray, ends: np.ndarray, batch_size: int, seed: int, pad_id: int,
                 pad_multiple: int = 1) -> None:
        self.windows, self.starts, self.ends = windows, starts, ends
        self.lengths = np.asarray([len(x) for x in windows.input_ids])
        self.batch_size, self.seed, self.pad_id, self.pad_multiple = batch_size, seed, pad_id, pad_multiple

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders, alive as long as the batch source itself
    def _order(self, epoch: int) -> list[np.ndarray]:
        return length_grouped_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch]))

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batch(self, epoch: int, index: int) -> dict:
        import torch

        from lmforge.data.batching import pad_batch

        rows = self._order(epoch)[index]
        ids, mask = pad_batch([self.windows.input_ids[i] for i in rows], self.pad_id, self.pad_multiple)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "start_positions": torch.from_numpy(self.starts[rows]),
                 "end_positions": torch.from_numpy(self.ends[rows])}
        if self.windows.token_type_ids is not None:
            batch["token_type_ids"] = pad_batch([self.windows.token_type_ids[i] for i in rows], 0, self.pad_multiple)[0]
        return batch


def split_by_context(data, fraction: float, seed: int):
    """Hold out a share of the contexts with all their questions (questions on one paragraph never straddle train
    and dev, which would flatter the dev score)."""
    contexts = list(dict.fromkeys(data.contexts))
    if len(contexts) < 2:
        raise DataError(f"{data.spec}: every question shares one context, so none can be held out for dev",
                        fix="give dev data with --eval")
    order = np.random.default_rng(seed).permutation(len(contexts))
    held = {contexts[i] for i in order[: max(1, round(len(contexts) * fraction))]}
    dev = [i for i, e in enumerate(data.examples) if e.context in held]
    train = [i for i, e in enumerate(data.examples) if e.context not in held]
    return data.subset(train, data.spec), data.subset(dev, f"{data.spec} (held-out {fraction:.0%} of the contexts)")


def prepare_data(config: FinetuneQAConfig):
    """Read and validate the training and dev questions up front."""
    from lmforge.data.squad import load_qa, resolve_qa

    train = load_qa(config.data)
    bundled = config.eval is None and resolve_qa(config.data).bundled is not None
    dev_spec = bundled_dev_split(config.data, None) if bundled else config.eval
    if dev_spec:
        return train, load_qa(dev_spec)
    return split_by_context(train, config.dev_fraction, config.train.seed)


def check_lengths(config: FinetuneQAConfig, model_config) -> None:
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions and config.max_length > positions:
        raise ConfigError(f"max_length {config.max_length} is more than {config.model} reads at once ({positions} "
                          "tokens)", where="--max-length",
                          fix=f"use at most {positions}; longer contexts are read in windows anyway")
    if config.stride > config.max_length // 2:
        raise ConfigError(f"stride {config.stride} is more than half of max_length {config.max_length}: windows would "
                          "leave too little room for the question", where="--stride",
                          fix=f"use at most {config.max_length // 2} (the usual pair is 384 and 128)")


def score_dev(model, windows, dev, pad_id: int, batch_size: int, n_best: int, max_answer_length: int) -> dict:
    """Dev EM and F1 (percent) of the model being trained: decode every question's best span and score it."""
    from lmforge.evaluation.squad import squad_scores
    from lmforge.inference.extractive_qa import best_answers, window_logits

    starts, ends = window_logits(model, windows, pad_id, batch_size)
    answers = best_answers(starts, ends, windows, dev.contexts, n_best=n_best, max_answer_length=max_answer_length)
    return squad_scores([a["answer"] for a in answers], [e.answers for e in dev.examples])


def prepare_qa(config: FinetuneQAConfig):
    """Validate inputs, write the run dir's config, tokenize into windows, build the model: all but the training."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from lmforge.data.qa_windows import answer_positions, check_fast, encode_windows
    from lmforge.models import from_pretrained, load_config, load_tokenizer, resolve_model_path
    from lmforge.training.loop import TaskSpec, seed_everything

    resolve_model_path(config.model)  # a bad model spec fails before the data is read
    check_lengths(config, load_config(config.model))
    train, dev = prepare_data(config)
    tokenizer = load_tokenizer(config.model)
    check_fast(tokenizer, config.model)
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    run.write_info(stage="finetune", task="qa", config=config,
                   extra={"data": {"train": data_info(train.spec, train.files, questions=len(train)),
                                   "dev": data_info(dev.spec, dev.files, questions=len(dev))}})
    seed_everything(config.train.seed)
    model = from_pretrained(AutoModelForQuestionAnswering, config.model, attn_implementation="sdpa")
    # training learns each question's first answer (SQuAD train files have one); dev scores against all of them
    train_windows = encode_windows(tokenizer, train.questions, train.contexts, config.max_length, config.stride)
    starts = [e.answer_starts[0] for e in train.examples]
    first, last = answer_positions(train_windows, starts, [s + len(e.answers[0]) for s, e in zip(starts,
                                                                                                 train.examples)])
    dev_windows = encode_windows(tokenizer, dev.questions, dev.contexts, config.max_length, config.stride)
    log.info("%d training questions read as %d windows (%d hold their answer); %d dev questions as %d windows",
             len(train), len(train_windows), int((first > 0).sum()), len(dev), len(dev_windows))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = WindowBatches(train_windows, first, last, config.train.batch_size, config.train.seed, pad_id,
                            pad_multiple=8 if torch.cuda.is_available() else 1)
    spec = TaskSpec(
        name="finetune qa", model=model, train_data=batches, save_model=hf_saver(tokenizer),
        evaluate=lambda m: score_dev(m, dev_windows, dev, pad_id, config.train.batch_size * 2, config.n_best,
                                     config.max_answer_length),
        best_metric="f1", greater_is_better=True,
        count_tokens=lambda b: int(b["attention_mask"].sum()),
        count_examples=lambda b: len(b["start_positions"]),
        eval_size=len(dev_windows),
    )
    return spec, run, {}


finetune_qa = training_stage(
    prepare_qa, "Fine-tune an encoder for extractive QA; returns a summary (run dir, steps, dev EM/F1 of the kept "
    "model).")


def evaluate_qa(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """SQuAD v1.1 EM and F1 (percent) on questions with gold answers, and a few predictions to look at."""
    from lmforge.data.squad import load_qa
    from lmforge.evaluation.squad import best_over_golds, squad_scores
    from lmforge.inference.pipelines import QuestionAnsweringPipeline

    if options.data is None:
        raise LmforgeError("evaluating a QA model needs questions with gold answers", where="--data",
                           fix="e.g. --data dev-v1.1.json (SQuAD v1.1 JSON), a .jsonl of question, context, answers, "
                               "or squad-sample (a smoke check)")
    data = load_qa(options.data)
    if options.limit:
        data = data.subset(list(range(min(options.limit, len(data)))), data.spec)
    pipeline = QuestionAnsweringPipeline(run.model_dir, info=info)
    started = time.perf_counter()
    predicted = pipeline.predict(list(zip(data.questions, data.contexts)), batch_size=options.batch_size)
    seconds = time.perf_counter() - started
    golds = [e.answers for e in data.examples]
    scores = squad_scores([p["answer"] for p in predicted], golds)
    shown = [{"id": e.id, "question": e.question, "answers": sorted(set(e.answers), key=e.answers.index),
              "prediction": p["answer"], "score": round(p["score"], 4),
              **{k: 100.0 * v for k, v in best_over_golds(p["answer"], e.answers).items()}}  # percent, as above
             for e, p in zip(data.examples[:SHOWN_EXAMPLES], predicted)]
    return {"data": options.data, "n": len(data), **scores,
            "max_length": pipeline.max_length, "stride": pipeline.stride,
            "windows_per_question": round(float(np.mean([p["windows"] for p in predicted])), 3),
            "inference_s": round(seconds, 2), "examples": shown}


def report_qa(result: dict) -> list:
    """The terminal report: EM and F1, how the contexts were read, and a few questions with their predictions."""
    from rich.table import Table
    from rich.text import Text

    headline = Text.assemble(
        (result["data"], "bold"), f"  n={result['n']}  EM ", (f"{result['exact_match']:.2f}", "bold"),
        "  F1 ", (f"{result['f1']:.2f}", "bold"),
        f"\n  read: windows of {result['max_length']} tokens (stride {result['stride']}), "
        f"{result['windows_per_question']:.2f} a question, {result['inference_s']:.1f}s")
    table = Table("question", "gold", "predicted", "EM", "F1")
    for example in result["examples"]:
        table.add_row(example["question"], " | ".join(example["answers"]), example["prediction"],
                      f"{example['exact_match']:.0f}", f"{example['f1']:.1f}")
    return [headline, table]


TASK = register(Task(
    name="qa", stage="finetune", config=FinetuneQAConfig, train=finetune_qa, evaluate=evaluate_qa, report=report_qa,
    summary="Fine-tune an encoder for extractive question answering (SQuAD v1.1); the best dev F1 checkpoint is kept.",
    pipeline="question-answering", routes=("qa", "embeddings"), architectures=("ForQuestionAnswering",),
    flags=("model", "data", "eval", "max_length", "stride"),
    metrics=("f1", "exact_match", "n"),
))
