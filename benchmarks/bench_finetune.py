"""Classification fine-tuning throughput: lmforge's loop vs the Hugging Face Trainer, same model and data.

Model: the embedded MiniLM encoder (or --model). Data: the first N movie-reviews training rows. Both sides: batch 32,
max length 128, AdamW at 5e-5, fp32 on CPU (bf16 on GPU). The Trainer side is the plain HF recipe: tokenize with
truncation, ``DataCollatorWithPadding`` (dynamic padding), random batches.

    python benchmarks/bench_finetune.py [--model minilm] [--steps 25] [--batch-size 32]
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
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default="movie-reviews")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from lmforge.data.labeled import load_text_label
    from lmforge.models import from_pretrained, load_tokenizer
    from lmforge.tasks.classify import FinetuneClassifyConfig, prepare_classify

    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    total = args.steps + args.warmup + 1
    data = load_text_label(args.data)
    n = total * args.batch_size
    subset = work / "train.jsonl"
    import json

    subset.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(data.texts[:n], data.labels[:n])))

    # ---------------------------------------------------------------- lmforge
    config = FinetuneClassifyConfig.model_validate({
        "model": args.model, "data": str(subset), "eval": str(subset), "out": str(work / "run"),
        "max_length": args.max_length,
        "train": {"max_steps": total, "batch_size": args.batch_size, "lr": 5e-5, "log_every": 1000}})
    task, run, _ = prepare_classify(config)
    ours = time_lmforge(task, run, config.train, args.warmup, examples_per_step=args.batch_size)

    # ---------------------------------------------------------------- Hugging Face Trainer
    tokenizer = load_tokenizer(args.model)
    labels = sorted(set(data.labels[:n]))
    enc = tokenizer(data.texts[:n], truncation=True, max_length=args.max_length)
    rows = [{"input_ids": ids, "attention_mask": mask, "labels": labels.index(y)}
            for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], data.labels[:n])]
    torch.manual_seed(0)
    model = from_pretrained(AutoModelForSequenceClassification, args.model, num_labels=len(labels),
                            attn_implementation="sdpa")
    theirs = time_trainer(model, rows, DataCollatorWithPadding(tokenizer), work, batch_size=args.batch_size,
                          steps=total, lr=5e-5, warmup=args.warmup, examples_per_step=args.batch_size)
    report("finetune_classify", "examples_per_s", ours, theirs,
           {"model": args.model, "data": f"{args.data} ({n} rows)", "batch_size": args.batch_size,
            "max_length": args.max_length,
            "command": "python benchmarks/bench_finetune.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
