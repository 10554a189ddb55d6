"""Small helpers shared by tests (argument lists for tiny runs)."""

from __future__ import annotations

import json
from pathlib import Path

TINY_ARCH = ["--set", "arch.hidden_size=32", "--set", "arch.num_hidden_layers=2", "--set",
             "arch.num_attention_heads=2", "--set", "arch.intermediate_size=64"]


def pretrain_args(corpus: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--objective", "mlm-nsp", "--corpus", str(corpus), "--tokenizer", str(tokenizer),
            "--size", "tiny", *TINY_ARCH, "--seq-len", "32", "--batch-size", "8", "--out", str(out),
            "--set", "train.threads=1", *extra]


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def evals(run: Path) -> list[tuple[int, dict]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval"]) for r in rows if "eval" in r]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
