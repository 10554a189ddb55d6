"""Sequence classification: overfit, best-checkpoint selection, and plain-transformers loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.tasks.classify import ClassificationBatches, FinetuneClassifyConfig, finetune_classify
from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl
from tests.helpers import evals, losses


def _config(**fields) -> FinetuneClassifyConfig:
    train = {"threads": 2, "log_every": 1, **fields.pop("train", {})}
    return FinetuneClassifyConfig.model_validate({**fields, "train": train})


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, tiny_bert_dir):
    """16 real reviews, trained until memorised; dev = the same rows."""
    rows = read_jsonl_gz(BUNDLED / "movie-reviews" / "movie_reviews.train.jsonl.gz", 16)
    folder = tmp_path_factory.mktemp("overfit")
    data = write_jsonl(folder / "train.jsonl", rows)
    out = folder / "run"
    summary = finetune_classify(
        _config(model=str(tiny_bert_dir), data=str(data), eval=str(data), out=str(out), max_length=64,
                train={"max_steps": 80, "batch_size": 8, "lr": 3e-3, "warmup": 0, "eval_every": 20}),
        show_progress=False,
    )
    return out, rows, summary


def test_overfit_loss_falls_and_predictions_survive_save_load(overfit_run):
    import lmforge

    out, rows, summary = overfit_run
    curve = [loss for _, loss in losses(out)]
    assert np.mean(curve[:5]) > 0.6 and np.mean(curve[-5:]) < 0.1, curve
    assert summary["best"]["value"] == 1.0
    pipeline = lmforge.load(out)
    predicted = [p["label"] for p in pipeline.predict([r["text"] for r in rows])]
    assert predicted == [r["label"] for r in rows]


def test_plain_transformers_loads_the_run_and_agrees_with_lmforge(overfit_run, cli):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, rows, _ = overfit_run
    texts = [r["text"] for r in rows[:8]] + ["an unseen sentence about a film"]
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits, -1).numpy()
    hf_labels = [model.config.id2label[i] for i in probs.argmax(-1)]
    result = cli("predict", out, *texts)
    ours = [json.loads(line) for line in result.out.splitlines()]
    assert [o["label"] for o in ours] == hf_labels
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert labels == ["negative", "positive"]
    ours_probs = np.array([[o["probabilities"][label] for label in labels] for o in ours])
    np.testing.assert_allclose(ours_probs, probs, atol=1e-5)


def test_the_best_dev_checkpoint_is_what_the_run_keeps(tmp_path, tiny_bert_dir, sentiment_files):
    import lmforge

    out = tmp_path / "run"
    summary = finetune_classify(
        _config(model=str(tiny_bert_dir), data=str(sentiment_files["train"]), eval=str(sentiment_files["dev"]),
                out=str(out), best_metric="accuracy",
                train={"max_steps": 24, "batch_size": 16, "lr": 2e-3, "eval_every": 4}),
        show_progress=False,
    )
    history = evals(out)
    best_step, best = max(history, key=lambda item: (item[1]["accuracy"], -item[0]))
    assert summary["best"]["step"] == best_step
    result = lmforge.evaluate(out, str(sentiment_files["dev"]), write=False)
    assert result["accuracy"] == pytest.approx(best["accuracy"])


def test_multiclass_csv_with_custom_fields(tmp_path, tiny_bert_dir, cli):
    rows = read_jsonl_gz(BUNDLED / "wordnet-topics" / "wordnet_topics.train.jsonl.gz", 3000)
    keep = {"noun.animal", "noun.plant", "noun.food"}
    rows = [r for r in rows if r["label"] in keep][:90]
    path = tmp_path / "topics.csv"
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["gloss", "topic"])
        writer.writerows([(r["text"], r["label"]) for r in rows])
    out = tmp_path / "run"
    result = cli("finetune", "classify", "--model", tiny_bert_dir, "--data", path, "--text-field", "gloss",
                 "--label-field", "topic", "--out", out, "--max-steps", "4", "--batch-size", "16")
    assert result.code == 0, result.text
    config = json.loads((out / "model" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(keep)
    info = (out / "lmforge.yaml").read_text()
    assert "held-out 10%" in info  # no dev data given: a stratified share was held out


def test_batches_are_length_grouped_and_deterministic():
    rng = np.random.default_rng(0)
    encoded = [list(range(int(n))) for n in rng.integers(3, 60, size=400)]
    pieces = [[x] for x in encoded]  # one piece per text
    source = ClassificationBatches(pieces, [0] * 400, batch_size=16, seed=3, pad_id=0)
    padded = sum(source.batch(0, i)["input_ids"].numel() for i in range(source.num_batches(0)))
    real = sum(len(x) for x in encoded)
    assert padded / real < 1.1  # random batches would pad ~50% here
    a, b = source.batch(1, 5), ClassificationBatches(pieces, [0] * 400, 16, 3, 0).batch(1, 5)
    assert torch.equal(a["input_ids"], b["input_ids"])
    seen = sorted(int(x) for i in range(source.num_batches(2)) for x in source._order(2)[i])
    assert seen == list(range(400))
