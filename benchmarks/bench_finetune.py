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
from common import StepClock, report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default="movie-reviews")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)

    from lmforge.config import FinetuneClassifyConfig
    from lmforge.data.labeled import load_text_label
    from lmforge.models import from_pretrained, load_tokenizer
    from lmforge.tasks.classify import prepare_classify
    from lmforge.training.loop import train

    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    total = args.steps + args.warmup + 1
    cuda = torch.cuda.is_available()
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
    task, run = prepare_classify(config)
    task.evaluate = None
    ours_clock = StepClock(args.warmup)
    task.on_step = lambda step, tokens: ours_clock.tick(tokens, args.batch_size)
    train(task, config.train, run, show_progress=False)
    ours = ours_clock.rate()

    # ---------------------------------------------------------------- Hugging Face Trainer
    tokenizer = load_tokenizer(args.model)
    labels = sorted(set(data.labels[:n]))
    enc = tokenizer(data.texts[:n], truncation=True, max_length=args.max_length)
    rows = [{"input_ids": ids, "attention_mask": mask, "labels": labels.index(y)}
            for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], data.labels[:n])]
    torch.manual_seed(0)
    model = from_pretrained(AutoModelForSequenceClassification, args.model, num_labels=len(labels),
                            attn_implementation="sdpa")
    theirs_clock = StepClock(args.warmup)
    pad = DataCollatorWithPadding(tokenizer)
    counted = {"tokens": 0}

    def collate(features):
        batch = pad(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            theirs_clock.tick(counted["tokens"], args.batch_size)
            counted["tokens"] = 0

    targs = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=args.batch_size, max_steps=total,
        learning_rate=5e-5, logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True,
        bf16=cuda, dataloader_num_workers=0, use_cpu=not cuda, seed=0,
    )
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    theirs = theirs_clock.rate()
    report("finetune_classify", "examples_per_s", ours, theirs,
           {"model": args.model, "data": f"{args.data} ({n} rows)", "batch_size": args.batch_size,
            "max_length": args.max_length,
            "command": "python benchmarks/bench_finetune.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
