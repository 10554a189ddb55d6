"""Causal-LM pretraining throughput: lmforge's loop vs the Hugging Face Trainer with ``GPT2LMHeadModel``.

Same model (a fresh GPT-2-shaped model of the chosen size), same packed windows (lmforge's epoch-0 windows), same
batch size, optimizer, LR and precision. The Trainer side uses ``DataCollatorForLanguageModeling(mlm=False)``.

    python benchmarks/bench_pretrain_clm.py [--size mini] [--steps 20] [--batch-size 16] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, time_lmforge, time_trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="mini")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--compile", action="store_true", help="torch.compile on the lmforge side (on by default on GPU)")
    args = parser.parse_args()

    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from lmforge.config import TokenizerTrainConfig
    from lmforge.data.tokenizer import train_tokenizer
    from lmforge.models import build_gpt
    from lmforge.tasks.pretrain_clm import ClmConfig, prepare_clm

    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    tok_dir = train_tokenizer(TokenizerTrainConfig(corpus=["corpus"], kind="bpe", vocab_size=args.vocab_size,
                                                   out=work / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    total = args.steps + args.warmup + 1
    train_cfg = {"max_steps": total, "batch_size": args.batch_size, "lr": 5e-4, "log_every": 1000}
    if args.compile:
        train_cfg["compile"] = True
    config = ClmConfig.model_validate({"tokenizer": str(tok_dir), "size": args.size,
                                            "seq_len": args.seq_len, "out": str(work / "run"), "eval_fraction": 0.0,
                                            "train": train_cfg})
    task, run, extra = prepare_clm(config)
    n_params = extra["parameters"]
    ours = time_lmforge(task, run, config.train, args.warmup)

    source = task.train_data
    rows = [{"input_ids": row.tolist()} for i in range(total + 1) for row in source.batch(0, i)["input_ids"]]
    torch.manual_seed(0)
    model = build_gpt(args.size, tokenizer, args.seq_len)
    theirs = time_trainer(model, rows, DataCollatorForLanguageModeling(tokenizer, mlm=False), work,
                          batch_size=args.batch_size, steps=total, lr=5e-4, warmup=args.warmup, weight_decay=0.01,
                          warmup_steps=0.05)
    report("pretrain_clm", "tokens_per_s", ours, theirs,
           {"model": f"GPT-2 {args.size} ({n_params / 1e6:.1f}M parameters)", "seq_len": args.seq_len,
            "batch_size": args.batch_size, "command": "python benchmarks/bench_pretrain_clm.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
