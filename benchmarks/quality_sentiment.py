"""Quality side by side: the plain Hugging Face Trainer recipe vs lmforge's default recipe, same model and split.

Both fine-tune the embedded MiniLM encoder on movie-reviews:train and report accuracy on movie-reviews:test. The
Trainer recipe is the reference one (3 epochs, lr 5e-5, batch 32, max length 128, its other defaults, last model).
lmforge's is `lmforge finetune classify --model minilm --data movie-reviews` (dev split picks the checkpoint).

    python benchmarks/quality_sentiment.py [--seed 0]        # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, hardware


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    import lmforge
    from lmforge.data.labeled import load_text_label
    from lmforge.models import from_pretrained, load_tokenizer
    from lmforge.tasks.classify import FinetuneClassifyConfig

    work = Path(tempfile.mkdtemp(prefix="lmforge-quality-"))
    train, test = load_text_label("movie-reviews"), load_text_label("movie-reviews:test")
    labels = sorted(set(train.labels))

    start = time.monotonic()
    tokenizer = load_tokenizer("minilm")
    enc = tokenizer(train.texts, truncation=True, max_length=128)
    rows = [{"input_ids": i, "attention_mask": m, "labels": labels.index(y)}
            for i, m, y in zip(enc["input_ids"], enc["attention_mask"], train.labels)]
    torch.manual_seed(args.seed)
    model = from_pretrained(AutoModelForSequenceClassification, "minilm", num_labels=2)
    targs = TrainingArguments(output_dir=str(work / "hf"), num_train_epochs=3, learning_rate=5e-5,
                              per_device_train_batch_size=32, save_strategy="no", report_to="none", disable_tqdm=True,
                              logging_steps=10_000, seed=args.seed, use_cpu=not torch.cuda.is_available())
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer)).train()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test.texts), 64):
            batch = tokenizer(test.texts[i : i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            predicted = model(**batch).logits.argmax(-1).cpu().numpy()
            correct += int(np.sum(np.asarray([labels[p] for p in predicted]) == np.asarray(test.labels[i : i + 64])))
    hf = {"accuracy": correct / len(test.texts), "seconds": time.monotonic() - start}

    start = time.monotonic()
    config = FinetuneClassifyConfig.model_validate({"model": "minilm", "data": "movie-reviews",
                                                    "out": str(work / "lmforge"), "train": {"seed": args.seed}})
    lmforge.finetune_classify(config, show_progress=False)
    ours = {"accuracy": lmforge.evaluate(config.out, "movie-reviews:test")["accuracy"],
            "seconds": time.monotonic() - start}
    print(f"\n== movie-reviews:test accuracy, MiniLM, seed {args.seed}, on {hardware()}")
    print(f"   Hugging Face Trainer (3 epochs, lr 5e-5, batch 32)   {hf['accuracy']:.4f}   {hf['seconds']:.0f}s")
    print(f"   lmforge default recipe                              {ours['accuracy']:.4f}   {ours['seconds']:.0f}s")
    OUT.mkdir(exist_ok=True)
    (OUT / f"quality_sentiment_seed{args.seed}.json").write_text(json.dumps(
        {"benchmark": "quality_sentiment", "seed": args.seed, "hardware": hardware(), "trainer": hf, "lmforge": ours},
        indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
