"""Sequence classification (sentiment, topic, spam): binary and multi-class, on any encoder.

Encodes once up front, batches with length grouping and dynamic padding, evaluates on dev data during training and
keeps the best checkpoint by the dev metric in ``RUN/model``.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

from lmforge.config import FinetuneClassifyConfig
from lmforge.data.batching import length_grouped_batches, pad_batch
from lmforge.data.labeled import TextLabelData, check_class_counts, check_labels_known, load_text_label
from lmforge.data.readers import resolve
from lmforge.errors import DataError
from lmforge.rundir import RunDir, file_fingerprint
from lmforge.tasks.common import hf_saver, run_stage
from lmforge.training.loop import TaskSpec, seed_everything

log = logging.getLogger("lmforge")


class ClassificationBatches:
    """Length-grouped, dynamically padded batches; batch ``(epoch, i)`` is deterministic."""

    def __init__(self, encoded: list[list[int]], label_ids: list[int], batch_size: int, seed: int, pad_id: int,
                 pad_multiple: int = 1) -> None:
        self.encoded = encoded
        self.label_ids = np.asarray(label_ids, dtype=np.int64)
        self.lengths = np.asarray([len(x) for x in encoded])
        self.batch_size, self.seed, self.pad_id, self.pad_multiple = batch_size, seed, pad_id, pad_multiple

    @lru_cache(maxsize=2)
    def _order(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        return length_grouped_batches(self.lengths, self.batch_size, rng)

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.encoded) // self.batch_size)

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        rows = self._order(epoch)[index]
        ids, mask = pad_batch([self.encoded[i] for i in rows], self.pad_id, self.pad_multiple)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(self.label_ids[rows])}


def stratified_split(data: TextLabelData, fraction: float, seed: int) -> tuple[TextLabelData, TextLabelData]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    train_idx, dev_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=data.labels)
    return (
        data.subset(sorted(train_idx.tolist()), data.spec),
        data.subset(sorted(dev_idx.tolist()), f"{data.spec} (held-out {fraction:.0%})"),
    )


def _dev_spec(config: FinetuneClassifyConfig) -> str | None:
    if config.eval:
        return config.eval
    source = resolve(config.data)
    if source.bundled is not None and "dev" in source.bundled.splits and source.split != "dev":
        return f"{source.bundled.name}:dev"
    return None


def prepare_data(config: FinetuneClassifyConfig) -> tuple[TextLabelData, TextLabelData, list[str]]:
    """Read and validate training and dev data up front; every problem is reported before any work starts."""
    train_data = load_text_label(config.data, config.text_field, config.label_field)
    check_class_counts(train_data, config.min_examples_per_class)
    labels = sorted(train_data.counts())
    dev_spec = _dev_spec(config)
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


def evaluate_logits(model: torch.nn.Module, encoded: list[list[int]], label_ids: np.ndarray, pad_id: int,
                    batch_size: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    from lmforge.data.batching import sorted_batches

    device = next(model.parameters()).device
    preds = np.zeros(len(encoded), dtype=np.int64)
    total_loss = 0.0
    for rows in sorted_batches([len(x) for x in encoded], batch_size):
        ids, mask = pad_batch([encoded[i] for i in rows], pad_id)
        labels = torch.from_numpy(label_ids[rows]).to(device)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels)
        total_loss += float(out.loss) * len(rows)
        preds[rows] = out.logits.argmax(-1).cpu().numpy()
    return {
        "loss": total_loss / len(encoded),
        "accuracy": float(accuracy_score(label_ids, preds)),
        "macro_f1": float(f1_score(label_ids, preds, average="macro", labels=np.unique(label_ids), zero_division=0)),
    }


def prepare_classify(config: FinetuneClassifyConfig) -> tuple[TaskSpec, RunDir]:
    """Validate inputs, write the run dir's config, build the model and batches: everything but the training."""
    from transformers import AutoModelForSequenceClassification

    from lmforge.models import from_pretrained, load_tokenizer, resolve_model_path

    resolve_model_path(config.model)  # a bad model spec fails before the data is read
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
        stage="finetune",
        task="classify",
        config=config,
        extra={
            "labels": labels,
            "data": {
                "train": {"spec": train_data.spec, "rows": len(train_data), "files": [file_fingerprint(f) for f in train_data.files]},
                "dev": {"spec": dev_data.spec, "rows": len(dev_data), "files": [file_fingerprint(f) for f in dev_data.files]},
            },
        },
    )
    label2id = {label: i for i, label in enumerate(labels)}
    seed_everything(config.train.seed)
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label2id}
    if config.random_init:
        from lmforge.models import load_config

        model_config = load_config(config.model)
        model_config.update(head)
        model = AutoModelForSequenceClassification.from_config(model_config, attn_implementation="sdpa")
    else:
        model = from_pretrained(AutoModelForSequenceClassification, config.model, attn_implementation="sdpa",
                                ignore_mismatched_sizes=True, **head)
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]  # noqa: E731
    train_ids, dev_ids = encode(train_data.texts), encode(dev_data.texts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev_labels = np.asarray([label2id[x] for x in dev_data.labels])
    batches = ClassificationBatches(
        train_ids, [label2id[x] for x in train_data.labels], config.train.batch_size, config.train.seed, pad_id,
        pad_multiple=8 if torch.cuda.is_available() else 1,
    )

    task = TaskSpec(
        name="finetune classify",
        model=model,
        train_data=batches,
        save_model=hf_saver(tokenizer),
        evaluate=lambda m: evaluate_logits(m, dev_ids, dev_labels, pad_id, config.train.batch_size * 2),
        best_metric=config.best_metric,
        greater_is_better=config.best_metric != "loss",
        count_tokens=lambda b: int(b["attention_mask"].sum()),
    )
    return task, run


def finetune_classify(config: FinetuneClassifyConfig, *, show_progress: bool = True) -> dict:
    """Fine-tune a classifier; returns a summary (run dir, steps, dev metrics of the kept model)."""
    return run_stage(prepare_classify(config), config, show_progress)
