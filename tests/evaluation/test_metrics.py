"""`lmforge evaluate` numbers equal scikit-learn's on the same predictions."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from lmforge.evaluation.metrics import classification_metrics


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_bert_dir, sentiment_files):
    from lmforge.tasks.classify import FinetuneClassifyConfig, finetune_classify

    out = tmp_path_factory.mktemp("eval") / "run"
    finetune_classify(FinetuneClassifyConfig.model_validate({
        "model": str(tiny_bert_dir), "data": str(sentiment_files["train"]), "eval": str(sentiment_files["dev"]),
        "out": str(out), "train": {"max_steps": 10, "batch_size": 16, "lr": 2e-3}}), show_progress=False)
    return out


def test_evaluate_matches_sklearn_on_the_same_predictions(cli, small_run, sentiment_files):
    result = cli("evaluate", small_run, "--data", sentiment_files["test"], "--json")
    assert result.code == 0, result.text
    ours = json.loads(result.out)
    rows = [json.loads(line) for line in sentiment_files["test"].read_text().splitlines()]
    truth = [r["label"] for r in rows]
    predicted = [json.loads(line)["label"] for line in cli("predict", small_run, *[r["text"] for r in rows]).out.splitlines()]
    labels = ["negative", "positive"]
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert ours["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        assert ours["per_class"][label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert ours["confusion_matrix"] == confusion_matrix(truth, predicted, labels=labels).tolist()
    assert json.loads((small_run / "eval.json").read_text())["accuracy"] == ours["accuracy"]
    assert (small_run / "confusion.png").stat().st_size > 1000


def test_multiclass_with_a_never_predicted_class():
    truth = ["a", "b", "c", "c", "b", "a", "c"]
    pred = ["a", "b", "b", "b", "b", "a", "a"]
    ours = classification_metrics(truth, pred, ["a", "b", "c"])
    assert ours["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
    assert ours["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert ours["baseline"]["majority_label"] == "c"
    assert ours["baseline"]["accuracy"] == pytest.approx(3 / 7)
