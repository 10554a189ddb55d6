"""Sequence classification (sentiment, topic, spam): binary and multi-class, on any encoder.

Encodes once up front, batches with length grouping and dynamic padding, evaluates on dev data during training and
keeps the best checkpoint by the dev metric in ``RUN/model``. Evaluation: accuracy, macro-F1, per-class P/R/F1 and a
confusion matrix (scikit-learn), against the majority-class baseline.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache, partial
from typing import Literal

import numpy as np
from pydantic import Field

from lmforge.config import FinetuneConfig, Strict, TrainConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.data.labeled import TextLabelData, check_class_counts, check_labels_known, load_text_label
from lmforge.data.long_inputs import Reading
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.rundir import RunDir
from lmforge.tasks.common import bundled_dev_split, data_info, hf_saver, training_stage
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")


class ClassifyTrainConfig(TrainConfig):
    epochs: float | None = Field(3, gt=0, description="passes over the training data (fractions allowed)")


class LongInputSettings(Strict):
    """How texts longer than max_length are read (see lmforge.data.long_inputs)."""

    strategy: Literal["truncate", "head-tail", "windows"] = Field(
        "truncate", description="texts longer than max_length: truncate (read the start), head-tail (the start and "
        "the end), windows (overlapping windows over all of it, their answers pooled)",
        json_schema_extra={"flag": "--long-inputs"})
    stride: int | None = Field(None, ge=0, description="windows: tokens neighbouring windows share (default: a "
                               "quarter of a window)")
    pool: Literal["mean", "max"] = Field("mean", description="windows: how the windows' logits become one answer")
    max_windows: int = Field(16, ge=1, description="windows: the most one text is read as (a longer text gets them "
                             "spread from its start to its end; the server refuses it unless truncate is sent)")
    head_fraction: float = Field(0.25, gt=0, lt=1, description="head-tail: share of the window given to the start")
    training: Literal["pooled", "windows"] = Field(
        "windows", description="windows: train on every window as an example with the document's label (windows: "
        "0.9932 on spam:dev) or on each document's pooled answer (pooled: 0.9864)")


class FinetuneClassifyConfig(FinetuneConfig):
    text_field: str = Field("text", description="field holding the text")
    label_field: str = Field("label", description="field holding the label")
    max_length: int = Field(128, ge=8, description="tokens the model reads at once (up to the model's limit, e.g. 512 "
                            "for minilm); longer texts are read as --long-inputs says")
    long_inputs: LongInputSettings = Field(default_factory=LongInputSettings, description="texts longer than max_length")
    min_examples_per_class: int = Field(2, ge=1, description="refuse classes with fewer training examples")
    best_metric: Literal["accuracy", "macro_f1", "loss"] = Field(
        "accuracy", description="dev metric that picks the checkpoint kept in model/"
    )
    random_init: bool = Field(
        False, description="keep the model's architecture and tokenizer but start from random weights (a baseline)"
    )
    train: ClassifyTrainConfig = Field(default_factory=ClassifyTrainConfig, description="training loop")


class ClassificationBatches:
    """Length-grouped, dynamically padded batches of texts, each read as one or more pieces (see
    :mod:`lmforge.data.long_inputs`); batch ``(epoch, i)`` is deterministic. A batch holds every piece of its texts and,
    when a text has several, ``owner``: the text each piece belongs to."""

    def __init__(self, pieces: list[list[list[int]]], label_ids: list[int], batch_size: int, seed: int, pad_id: int,
                 pad_multiple: int = 1) -> None:
        self.pieces = pieces
        self.label_ids = np.asarray(label_ids, dtype=np.int64)
        self.lengths = np.asarray([sum(len(p) for p in x) for x in pieces])
        self.several = any(len(x) > 1 for x in pieces)
        self.batch_size, self.seed, self.pad_id, self.pad_multiple = batch_size, seed, pad_id, pad_multiple
        # texts read in several windows come fewer at a time: a batch holds about as many tokens as batch_size
        # one-window texts would
        self.max_tokens = batch_size * max(len(p) for x in pieces for p in x) if self.several else None

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders, alive as long as the batch source itself
    def _order(self, epoch: int) -> list[np.ndarray]:
        from lmforge.data.batching import capped

        rng = np.random.default_rng([self.seed, epoch])
        return capped(length_grouped_batches(self.lengths, self.batch_size, rng), self.lengths, self.max_tokens)

    def num_batches(self, epoch: int) -> int:
        return len(self._order(epoch))

    def batch(self, epoch: int, index: int) -> dict:
        import torch

        from lmforge.data.batching import pad_batch
        from lmforge.data.long_inputs import flatten

        rows = self._order(epoch)[index]
        flat, owner = flatten([self.pieces[i] for i in rows])
        ids, mask = pad_batch(flat, self.pad_id, self.pad_multiple)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(self.label_ids[rows])}
        if self.several:
            batch["owner"] = torch.from_numpy(owner)
        return batch


def read_texts(tokenizer, texts: list[str], reading) -> list[list[list[int]]]:
    """Each text as the pieces a classifier reads (``reading``: a :class:`lmforge.data.long_inputs.Reading`)."""
    from lmforge.data.long_inputs import Framing

    framing = Framing.of(lambda t: tokenizer(t, verbose=False)["input_ids"],
                         lambda t: tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])
    contents = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    return [reading.pieces(c, framing) for c in contents]


def stratified_split(data: TextLabelData, fraction: float, seed: int) -> tuple[TextLabelData, TextLabelData]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    train_idx, dev_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=data.labels)
    return (
        data.subset(sorted(train_idx.tolist()), data.spec),
        data.subset(sorted(dev_idx.tolist()), f"{data.spec} (held-out {fraction:.0%})"),
    )


def with_dataset_recipe(config: FinetuneClassifyConfig) -> FinetuneClassifyConfig:
    """A bundled dataset may recommend how its long texts are read, and for how many epochs (chosen on its dev split,
    in its dataset.json); the recommendation applies unless the user chose a strategy (the epochs, unless the user
    set --epochs or --max-steps)."""
    from lmforge.data.registry import lookup, split_spec

    dataset = lookup(split_spec(config.data)[0])
    recommended = (dataset.recipe if dataset else {}).get("long_inputs")
    if not recommended or "long_inputs" in config.model_fields_set and "strategy" in config.long_inputs.model_fields_set:
        return config
    update = {"long_inputs": config.long_inputs.model_copy(update=recommended)}
    # chosen with the strategy, the window and the epochs apply with it, unless the user set them
    window = dataset.recipe.get("max_length")
    if window is not None and "max_length" not in config.model_fields_set:
        update["max_length"] = int(window)
    epochs = dataset.recipe.get("epochs")
    chosen_length = config.train.model_fields_set & {"epochs", "max_steps"}
    if epochs is not None and not chosen_length:
        update["train"] = config.train.model_copy(update={"epochs": float(epochs)})
    log.info("%s: reading long texts with %s%s%s (%s; --long-inputs to change)", dataset.name,
             ", ".join(f"{k}={v}" for k, v in recommended.items()),
             f" at {update['max_length']} tokens" if "max_length" in update else "",
             f", {epochs:g} epoch{'s' if epochs != 1 else ''}" if "train" in update else "",
             dataset.recipe.get("why", "its recipe"))
    return config.model_copy(update=update)


def prepare_data(config: FinetuneClassifyConfig) -> tuple[TextLabelData, TextLabelData, list[str]]:
    """Read and validate training and dev data up front; every problem is reported before any work starts."""
    train_data = load_text_label(config.data, config.text_field, config.label_field)
    check_class_counts(train_data, config.min_examples_per_class)
    labels = sorted(train_data.counts())
    dev_spec = bundled_dev_split(config.data, config.eval)
    if dev_spec:
        dev_data = load_text_label(dev_spec, config.text_field, config.label_field)
        check_labels_known(dev_data, labels, "dev")
    else:
        if min(train_data.counts().values()) < 2:
            raise DataError(
                f"{config.data}: cannot hold out a stratified dev set: a class has a single example",
                fix="give dev data with --eval, or add examples",
            )
        train_data, dev_data = stratified_split(train_data, config.dev_fraction, config.train.seed)
    return train_data, dev_data, labels


def evaluate_logits(model, pieces: list[list[list[int]]], label_ids: np.ndarray, pad_id: int, batch_size: int,
                    how: str = "mean") -> dict[str, float]:
    """Dev loss, accuracy and macro-F1 of an HF sequence classifier on texts read as pieces (pooled per text)."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from lmforge.data.batching import pad_batch, sorted_batches
    from lmforge.data.long_inputs import flatten, pool

    device = next(model.parameters()).device
    flat, owner = flatten(pieces)
    logits = None
    for rows in sorted_batches([len(x) for x in flat], batch_size):
        ids, mask = pad_batch([flat[i] for i in rows], pad_id)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
        if logits is None:
            logits = np.zeros((len(flat), out.shape[1]), dtype=np.float32)
        logits[rows] = out
    logits = pool(logits, owner, len(pieces), how)
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(label_ids)))
    preds = logits.argmax(-1)
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(label_ids, preds)),
        "macro_f1": float(f1_score(label_ids, preds, average="macro", labels=np.unique(label_ids), zero_division=0)),
    }


def majority_baseline(label_ids: np.ndarray) -> dict[str, float]:
    """Dev accuracy and macro-F1 of always predicting the most frequent class: what a model must beat."""
    from sklearn.metrics import accuracy_score, f1_score

    majority = np.full_like(label_ids, np.bincount(label_ids).argmax())
    return {"accuracy": float(accuracy_score(label_ids, majority)),
            "macro_f1": float(f1_score(label_ids, majority, average="macro", labels=np.unique(label_ids),
                                       zero_division=0))}


def prepare_classify(config: FinetuneClassifyConfig):
    """Validate inputs, write the run dir's config, build the model and batches: everything but the training."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmforge.data.long_inputs import pool
    from lmforge.models import from_pretrained, load_config, load_tokenizer, resolve_model_path
    from lmforge.training.loop import TaskSpec, seed_everything
    from lmforge.training.objectives import PooledClassifier

    resolve_model_path(config.model)  # a bad model spec fails before the data is read
    positions = getattr(load_config(config.model), "max_position_embeddings", None)
    if positions and config.max_length > positions:
        raise ConfigError(f"max_length {config.max_length} is more than {config.model} reads at once ({positions} "
                          "tokens)", where="--max-length",
                          fix=f"use at most {positions}; longer texts are read with --long-inputs windows or head-tail")
    train_data, dev_data, labels = prepare_data(config)
    tokenizer = load_tokenizer(config.model)
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    if config.resume and run.config_path.exists():
        previous = run.info()
        if previous.get("labels") and previous["labels"] != labels:
            raise DataError(
                f"cannot --resume {run.root}: its labels {previous['labels']} differ from the data's {labels}",
                fix="resume with the same data, or start a new run with --overwrite",
            )
    run.write_info(
        stage="finetune", task="classify", config=config,
        extra={"labels": labels,
               "data": {"train": data_info(train_data.spec, train_data.files, rows=len(train_data)),
                        "dev": data_info(dev_data.spec, dev_data.files, rows=len(dev_data))}},
    )
    label2id = {label: i for i, label in enumerate(labels)}
    seed_everything(config.train.seed)
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label2id}
    if config.random_init:
        model_config = load_config(config.model)
        model_config.update(head)
        model = AutoModelForSequenceClassification.from_config(model_config, attn_implementation="sdpa")
    else:
        model = from_pretrained(AutoModelForSequenceClassification, config.model, attn_implementation="sdpa",
                                ignore_mismatched_sizes=True, **head)
    reading = Reading.from_config(config.model_dump())
    train_pieces, dev_pieces = read_texts(tokenizer, train_data.texts, reading), read_texts(tokenizer, dev_data.texts, reading)
    train_labels = [label2id[x] for x in train_data.labels]
    if reading.strategy == "windows" and config.long_inputs.training == "windows":  # every window an example
        train_labels = [label for label, text in zip(train_labels, train_pieces) for _ in text]
        train_pieces = [[piece] for text in train_pieces for piece in text]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev_labels = np.asarray([label2id[x] for x in dev_data.labels])
    batches = ClassificationBatches(
        train_pieces, train_labels, config.train.batch_size, config.train.seed, pad_id,
        pad_multiple=8 if torch.cuda.is_available() else 1,
    )
    how = config.long_inputs.pool
    spec = TaskSpec(
        name="finetune classify",
        model=PooledClassifier(model, partial(pool, how=how)),
        train_data=batches,
        save_model=hf_saver(tokenizer, unwrap=lambda wrapper: wrapper.model),
        evaluate=lambda wrapper: evaluate_logits(wrapper.model, dev_pieces, dev_labels, pad_id,
                                                 config.train.batch_size * 2, how),
        best_metric=config.best_metric,
        greater_is_better=config.best_metric != "loss",
        count_tokens=lambda b: int(b["attention_mask"].sum()),
        count_examples=lambda b: len(b["labels"]),
        eval_size=sum(len(x) for x in dev_pieces),
        baseline=majority_baseline(dev_labels),
    )
    return spec, run, {}


finetune_classify = training_stage(
    prepare_classify, "Fine-tune a classifier; returns a summary (run dir, steps, dev metrics of the kept model).",
    resolve=with_dataset_recipe)  # before the loop reads config.train: the recipe's epochs must reach it


def evaluate_classify(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """Accuracy, macro-F1, per-class scores and the confusion matrix (PNG beside eval.json) on labeled data."""
    from lmforge.evaluation.metrics import classification_metrics
    from lmforge.evaluation.plots import confusion_png
    from lmforge.inference.pipelines import ClassificationPipeline

    config = info.get("config") or {}
    if options.data is None:
        raise LmforgeError("evaluating a classifier needs labeled data", where="--data",
                           fix="e.g. --data movie-reviews:test, or a .jsonl/.csv file with text and label fields")
    labeled = load_text_label(options.data, options.text_field or config.get("text_field", "text"),
                              options.label_field or config.get("label_field", "label"))
    pipeline = ClassificationPipeline(run.model_dir, info=info)
    check_labels_known(labeled, pipeline.labels, "evaluation")
    started = time.perf_counter()
    predicted = pipeline.predict(labeled.texts, batch_size=options.batch_size)
    seconds = time.perf_counter() - started
    metrics = classification_metrics(labeled.labels, [p["label"] for p in predicted], pipeline.labels)
    confusion_png(metrics["confusion_matrix"], pipeline.labels, run.root / "confusion.png")
    reading = {"long_inputs": pipeline.reading.strategy, "max_length": pipeline.max_length,
               "windows_per_text": round(float(np.mean([p["windows"] for p in predicted])), 3),
               "inference_s": round(seconds, 2)}
    return {"data": options.data, **metrics, **reading}


def report_classify(result: dict) -> list:
    """The terminal report: headline metrics against the majority baseline, and per-class scores."""
    from rich.table import Table
    from rich.text import Text

    base = result["baseline"]
    headline = Text.assemble(
        (result["data"], "bold"), f"  n={result['n']}  accuracy ", (f"{result['accuracy']:.4f}", "bold"),
        "  macro-F1 ", (f"{result['macro_f1']:.4f}", "bold"),
        f"   (majority '{base['majority_label']}': accuracy {base['accuracy']:.4f}, macro-F1 {base['macro_f1']:.4f})",
    )
    if "long_inputs" in result:  # how it read the texts (older eval.json files do not say)
        headline.append(f"\n  read: {result['long_inputs']} at {result['max_length']} tokens, "
                        f"{result['windows_per_text']:.2f} windows a text, {result['inference_s']:.1f}s")
    table = Table("label", "precision", "recall", "f1", "support")
    for label, m in result["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    return [headline, table]


TASK = register(Task(
    name="classify", stage="finetune", config=FinetuneClassifyConfig, train=finetune_classify,
    evaluate=evaluate_classify, report=report_classify,
    summary="Fine-tune a text classifier (sentiment, topic, spam, ...); the best checkpoint on dev data is kept.",
    pipeline="text-classification", routes=("classify", "explain", "embeddings"),
    architectures=("ForSequenceClassification",),
    flags=("model", "data", "eval", "text_field", "label_field", "max_length", "long_inputs.strategy"),
    metrics=("accuracy", "macro_f1", "n", "per_class", "baseline"),
))
