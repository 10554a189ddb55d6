"""Standard metrics, computed by the libraries the field trusts (scikit-learn, sacrebleu), never re-implemented."""

from __future__ import annotations

import math
from collections import Counter


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, the confusion matrix, and the majority baseline."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    majority_label, majority_count = Counter(y_true).most_common(1)[0]
    majority_pred = [majority_label] * len(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "n": len(y_true),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "baseline": {
            "majority_label": majority_label,
            "accuracy": majority_count / len(y_true),
            "macro_f1": float(f1_score(y_true, majority_pred, labels=labels, average="macro", zero_division=0)),
        },
    }


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))
