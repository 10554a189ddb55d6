"""Shared timing for the side-by-side benchmarks: lmforge and the plain Hugging Face way, same model, data, hardware."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "out"


class StepClock:
    """Timestamps after each optimizer step; throughput is measured after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.examples: list[int] = []

    def tick(self, tokens: int, examples: int = 0) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.tokens.append(tokens)
        self.examples.append(examples)

    def rate(self) -> dict[str, float]:
        w = self.warmup
        if len(self.times) <= w + 1:
            raise RuntimeError("too few steps timed")
        span = self.times[-1] - self.times[w]
        return {
            "steps": len(self.times) - w - 1,
            "seconds": span,
            "tokens_per_s": sum(self.tokens[w + 1 :]) / span,
            "examples_per_s": sum(self.examples[w + 1 :]) / span,
        }


def time_lmforge(task, run, train_config, warmup: int, examples_per_step: int = 0) -> dict[str, float]:
    """lmforge's loop on a prepared task, evaluation off, timed per optimizer step."""
    from lmforge.training.loop import train

    task.evaluate = None
    clock = StepClock(warmup)
    task.on_step = lambda step, tokens: clock.tick(tokens, examples_per_step)
    train(task, train_config, run, show_progress=False)
    return clock.rate()


def time_trainer(model, rows: list[dict], collator, work: Path, *, batch_size: int, steps: int, lr: float, warmup: int,
                 examples_per_step: int = 0, seq2seq: bool = False, **training_args) -> dict[str, float]:
    """The plain Hugging Face Trainer (``Seq2SeqTrainer`` with ``seq2seq``) on ``rows``, timed per optimizer step;
    tokens are the batches' real (unpadded) input tokens, and target tokens with ``seq2seq``. Extra keyword arguments go to ``TrainingArguments``
    (weight_decay, warmup_steps, ...)."""
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    clock = StepClock(warmup)
    counted = {"tokens": 0}

    def collate(features):
        batch = collator(features)
        mask = batch.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        if seq2seq:  # an encoder-decoder reads the target too
            counted["tokens"] += int((batch["labels"] != -100).sum())
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.tick(counted["tokens"], examples_per_step)
            counted["tokens"] = 0

    cuda = torch.cuda.is_available()
    targs = (Seq2SeqTrainingArguments if seq2seq else TrainingArguments)(
        output_dir=str(work / "hf"), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True, bf16=cuda,
        dataloader_num_workers=0, use_cpu=not cuda, seed=0, **training_args,
    )
    (Seq2SeqTrainer if seq2seq else Trainer)(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    return clock.rate()


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})"


def report(name: str, unit: str, ours: dict, theirs: dict, extra: dict, theirs_name: str = "Hugging Face Trainer") -> dict:
    ratio = ours[unit] / theirs[unit]
    print(f"\n== {name} on {hardware()}")
    for key, value in extra.items():
        print(f"   {key}: {value}")
    print(f"   {'':28s} {unit:>16s}  steps  seconds")
    print(f"   {theirs_name:28s} {theirs[unit]:16.1f}  {theirs['steps']:5d}  {theirs['seconds']:7.1f}")
    print(f"   {'lmforge':28s} {ours[unit]:16.1f}  {ours['steps']:5d}  {ours['seconds']:7.1f}")
    print(f"   ratio lmforge / {theirs_name}: {ratio:.2f}x")
    OUT.mkdir(exist_ok=True)
    result = {"benchmark": name, "hardware": hardware(), "unit": unit, "lmforge": ours, "trainer": theirs,
              "ratio": ratio, **extra, "torch": torch.__version__}
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result
