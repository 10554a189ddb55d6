"""How much labeled data a classifier needs, and whether pretraining helps (``lmforge learning-curve``).

For each seed, the training split is shuffled class by class and each fraction takes the first ceil(f x n_c) rows of
every class: the subsets are nested (a larger fraction holds every row of a smaller one) and the same for the same
seed. Each subset is fine-tuned under one budget rule — ``epochs`` passes, but never fewer than ``min_steps``
optimizer steps (a few dozen labels get repeated, not a handful of steps) — keeps its best checkpoint on the dev
split and is scored on the test split. ``compare random-init`` trains the same architecture from random weights
beside it. Output: ``curve.json``, ``curve.png`` and one run dir per point under ``runs/``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from lmforge.data.labeled import TextLabelData, load_text_label
from lmforge.errors import ConfigError, DataError, LmforgeError

INITS = ("pretrained", "random-init")
POINT_FIELDS = {"init", "seed", "fraction", "labels", "accuracy", "macro_f1"}  # what a curve.json point holds


def nested_subsets(labels: list[str], fractions: list[float], seed: int) -> dict[float, list[int]]:
    """Row indices per fraction: every class shuffled with ``seed`` and cut at ceil(f x its size) (at least one
    row of each class), so the subsets grow by adding rows."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    orders = {c: list(rng.permutation(rows)) for c, rows in sorted(by_class.items())}
    return {f: sorted(int(i) for rows in orders.values() for i in rows[: max(1, math.ceil(f * len(rows)))])
            for f in sorted(fractions)}


def parse_fractions(text: str) -> list[float]:
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"'{text}' is not a list of numbers", where="--fractions", fix="e.g. 0.01,0.1,1") from None
    if not values or values[0] <= 0 or values[-1] > 1:
        raise ConfigError("fractions must lie in (0, 1]", where="--fractions", fix="e.g. 0.01,0.03,0.1,0.3,1")
    return values


def learning_curve(*, model: str, data: str, out: Path, fractions: list[float], seeds: int = 1,
                   first_seed: int = 0, compare: list[str] | None = None, epochs: float = 3.0, min_steps: int = 100,
                   batch_size: int = 32, max_length: int = 128, overwrite: bool = False, show_progress: bool = True,
                   extra: dict | None = None) -> dict:
    from lmforge.data.registry import lookup, split_spec
    from lmforge.rundir import write_json
    from lmforge.stages import evaluate as evaluate_run
    from lmforge.stages import finetune
    from lmforge.tasks.classify import FinetuneClassifyConfig

    inits = ["pretrained", *[c for c in (compare or []) if c != "pretrained"]]
    unknown = [c for c in inits if c not in INITS]
    if unknown:
        raise ConfigError(f"unknown comparison {', '.join(unknown)}", where="--compare", fix="use random-init")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LmforgeError(f"'{out}' exists and is not empty", where="--out",
                           fix="pass --overwrite to replace its curve, or choose another folder")
    name, split = split_spec(data)
    bundled = lookup(name)
    if split is not None:
        raise DataError(f"--data names a split ({data}); the curve uses the training split and scores on the test "
                        "split", where="--data", fix=f"give --data {name}")
    if bundled is None or "test" not in bundled.splits:
        raise DataError(f"'{data}' has no test split to score on", where="--data",
                        fix="use a bundled dataset with a test split (movie-reviews, wordnet-topics, spam)")
    train: TextLabelData = load_text_label(data)
    out.mkdir(parents=True, exist_ok=True)
    points = []
    started = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        subsets = nested_subsets(train.labels, fractions, seed)
        for fraction, rows in subsets.items():
            subset = out / "data" / f"seed{seed}-{fraction:g}.jsonl"
            subset.parent.mkdir(exist_ok=True)
            subset.write_text("".join(json.dumps({"text": train.texts[i], "label": train.labels[i]},
                                                 ensure_ascii=False) + "\n" for i in rows), encoding="utf-8")
            steps = max(min_steps, math.ceil(epochs * len(rows) / batch_size))
            for init in inits:
                run = out / "runs" / f"{init}-seed{seed}-{fraction:g}"
                config = FinetuneClassifyConfig.model_validate({
                    "model": model, "data": str(subset), "eval": f"{name}:dev" if "dev" in bundled.splits else None,
                    "out": str(run), "overwrite": True, "max_length": max_length,
                    "random_init": init == "random-init", "min_examples_per_class": 1,
                    # four dev evaluations a run: on a few dozen labels an epoch is a few steps, and evaluating
                    # at every epoch's end scored the whole dev split every third step
                    "train": {"max_steps": steps, "epochs": None, "batch_size": batch_size, "seed": seed,
                              "eval_every": max(1, steps // 4), **(extra or {})}})
                finetune("classify", config, show_progress=show_progress)
                scores = evaluate_run(run, f"{name}:test")
                points.append({"init": init, "seed": seed, "fraction": fraction, "labels": len(rows),
                               "steps": steps, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]})
                write_json(out / "curve.json", _summary(model, data, points, time.perf_counter() - started))
    result = _summary(model, data, points, time.perf_counter() - started)
    write_json(out / "curve.json", result)
    curve_png(result, out / "curve.png")
    return result


def merge_curves(dirs: list[Path], out: Path, *, overwrite: bool = False) -> dict:
    """One curve from curves of one model and dataset whose seeds ran apart (``--first-seed``): their points
    pooled, each (init, seed, fraction) once; ``curve.json`` and ``curve.png`` written to ``out``."""
    from lmforge.rundir import write_json

    if any(out.resolve() == d.resolve() for d in dirs):
        raise ConfigError(f"'{out}' is one of the curves being merged", where="--out",
                          fix="write the merged curve to a folder of its own")
    if (out / "curve.json").exists() and not overwrite:
        raise LmforgeError(f"'{out}' already holds a curve", where="--out",
                           fix="pass --overwrite to replace it, or choose another folder")
    points: list[dict] = []
    seconds, model, data = 0.0, None, None
    for folder in dirs:
        path = folder / "curve.json"
        if not path.is_file():
            raise DataError(f"'{folder}' holds no curve.json", where="--merge",
                            fix="give folders that lmforge learning-curve wrote")
        try:
            curve = json.loads(path.read_text(encoding="utf-8"))
            found, pooled = (curve["model"], curve["data"]), [dict(p) for p in curve["points"]]
            seconds += float(curve.get("seconds", 0.0))
            if not all(POINT_FIELDS <= p.keys() for p in pooled):
                raise KeyError("point")
        except (ValueError, KeyError, TypeError):
            raise DataError(f"'{path}' is not a learning curve", where="--merge",
                            fix="give folders that lmforge learning-curve wrote") from None
        if model is not None and found != (model, data):
            raise ConfigError(f"'{path}' is a curve of {found[0]} on {found[1]}, not of {model} on {data}",
                              where="--merge", fix="merge curves of one model and one dataset")
        (model, data), points = found, points + pooled
    seen: set[tuple] = set()
    for p in points:
        key = (p["init"], p["seed"], p["fraction"])
        if key in seen:
            raise ConfigError(f"seed {key[1]} of fraction {key[2]:g} ({key[0]}) is in more than one of the curves",
                              where="--merge", fix="merge curves that ran different seeds (--first-seed)")
        seen.add(key)
    points.sort(key=lambda p: (p["seed"], p["fraction"], INITS.index(p["init"]) if p["init"] in INITS else 99))
    result = _summary(model, data, points, seconds)  # the time the pooled curves took, not the merge's
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "curve.json", result)
    curve_png(result, out / "curve.png")
    return result


def _summary(model: str, data: str, points: list[dict], seconds: float) -> dict:
    table = []
    for init in dict.fromkeys(p["init"] for p in points):
        for labels in sorted({p["labels"] for p in points if p["init"] == init}):
            group = [p for p in points if p["init"] == init and p["labels"] == labels]
            for metric in ("accuracy", "macro_f1"):
                values = np.array([p[metric] for p in group])
                if metric == "accuracy":
                    row = {"init": init, "fraction": group[0]["fraction"], "labels": labels, "seeds": len(group)}
                row[metric] = float(values.mean())
                row[f"{metric}_std"] = float(values.std())
            table.append(row)
    return {"model": model, "data": data, "seconds": round(seconds, 1), "table": table,
            "points": points}


def curve_png(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("accuracy", "macro_f1")):
        for init, color in zip(INITS, ("#2b59c3", "#b42318")):
            rows = [r for r in result["table"] if r["init"] == init]
            if not rows:
                continue
            x = [r["labels"] for r in rows]
            y = np.array([r[metric] for r in rows])
            spread = np.array([r[f"{metric}_std"] for r in rows])
            ax.plot(x, y, marker="o", color=color, label=init)
            ax.fill_between(x, y - spread, y + spread, color=color, alpha=0.15)
        ax.set_xscale("log")
        counts = sorted({r["labels"] for r in result["table"]})
        ax.xaxis.set_minor_formatter(NullFormatter())  # the label counts are the ticks, not 2x10^2, 3x10^2, ...
        ax.set_xticks(counts, [f"{n:,}" for n in counts], fontsize=8)
        ax.set_xlabel("labeled training examples")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['model']} on {result['data']} (test split; band: ±1 sd over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
