"""PNG plots written next to a run's metrics: the loss curve and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(metrics_path: Path, out: Path) -> Path | None:
    from lmforge.training.logging import read_metrics

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval"]) for r in records if "eval" in r]
    if not train:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.plot(*zip(*train), label="train loss", color="#2563eb", linewidth=1.4)
    eval_losses = [(s, e["loss"]) for s, e in evals if "loss" in e]
    if eval_losses:
        ax.plot(*zip(*eval_losses), "o-", label="eval loss", color="#dc2626", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def confusion_png(matrix: list[list[int]], labels: list[str], out: Path) -> Path:
    plt = _pyplot()
    n = len(labels)
    size = max(3.6, min(12.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=60 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        top = max(max(row) for row in matrix) or 1
        for i in range(n):
            for j in range(n):
                value = matrix[i][j]
                ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
