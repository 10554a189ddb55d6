"""Sequence-to-sequence fine-tuning and generation: lmforge vs the plain Hugging Face way, same model and data.

Model: a fresh T5 of the chosen size preset with a unigram tokenizer trained on the translation pairs (both languages).
Data: the bundled ``translation`` pairs (en -> es). Training: lmforge's loop (length-grouped batches) vs
``Seq2SeqTrainer`` with ``DataCollatorForSeq2Seq`` (random batches, dynamic padding), same batch size, AdamW, LR and
precision; throughput in real (unpadded) source + target tokens per second. Generation: ``lmforge.load(run).predict`` vs ``model.generate`` over the
same dev sentences in batches in file order, same beams and length limit; sentences per second, and how many outputs
agree.

    python benchmarks/bench_seq2seq.py [--size mini] [--steps 20] [--batch-size 32] [--beams 4] [--sentences 128]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, time_lmforge, time_trainer

DATA = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "data" / "bundled" / "translation"


def rows(split: str) -> list[dict]:
    with gzip.open(DATA / f"bible_en_es.{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="mini", choices=["tiny", "mini", "small"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--sentences", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    import lmforge
    from lmforge.config import TokenizerTrainConfig
    from lmforge.data.tokenizer import train_tokenizer
    from lmforge.models import build_t5
    from lmforge.tasks.pretrain_span import prepare_t5_tokenizer
    from lmforge.tasks.seq2seq import prepare_seq2seq
    from lmforge.tasks.translate import FinetuneTranslateConfig

    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    train = rows("train")
    text = work / "both.txt"
    text.write_text("\n".join(r[k] for r in train for k in ("en", "es")), encoding="utf-8")
    tok_dir = train_tokenizer(TokenizerTrainConfig(corpus=[str(text)], kind="unigram", vocab_size=args.vocab_size,
                                                   out=work / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    prepare_t5_tokenizer(tokenizer)
    torch.manual_seed(0)
    build_t5(args.size, tokenizer).save_pretrained(work / "t5")
    tokenizer.save_pretrained(work / "t5")

    total = args.steps + args.warmup + 1
    lr = 3e-4
    config = FinetuneTranslateConfig.model_validate({
        "model": str(work / "t5"), "data": "translation", "out": str(work / "run"), "max_source_length": 128,
        "max_target_length": 128, "train": {"max_steps": total, "batch_size": args.batch_size, "lr": lr,
                                            "log_every": 1000}})
    task, run, _ = prepare_seq2seq(config, "translate")
    n_params = sum(p.numel() for p in task.model.parameters())
    ours = time_lmforge(task, run, config.train, args.warmup, examples_per_step=args.batch_size)
    task.save_model(task.model, run.model_dir)

    # the plain way: tokenize every pair, random batches padded by the collator
    n = (total + 1) * args.batch_size
    sources = tokenizer([r["en"] for r in train[:n]], truncation=True, max_length=128)["input_ids"]
    targets = tokenizer(text_target=[r["es"] for r in train[:n]], truncation=True, max_length=128)["input_ids"]
    hf_rows = [{"input_ids": s, "labels": t} for s, t in zip(sources, targets)]
    torch.manual_seed(0)
    model = build_t5(args.size, tokenizer)
    theirs = time_trainer(model, hf_rows, DataCollatorForSeq2Seq(tokenizer, model=model), work,
                          batch_size=args.batch_size, steps=total, lr=lr, warmup=args.warmup,
                          examples_per_step=args.batch_size, seq2seq=True, weight_decay=0.01, warmup_steps=0.06)
    command = "python benchmarks/bench_seq2seq.py " + " ".join(sys.argv[1:])
    report("seq2seq_finetune", "tokens_per_s", ours, theirs,
           {"model": f"T5 {args.size} ({n_params / 1e6:.1f}M parameters), unigram {args.vocab_size}",
            "data": "translation (en -> es); tokens: source + target, unpadded", "batch_size": args.batch_size, "command": command})

    # generation with the model lmforge trained: lmforge's pipeline vs generate() on batches in file order
    dev = [r["en"] for r in (rows("test") + rows("dev"))][: args.sentences]
    pipeline = lmforge.load(run.root)
    options = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
    start = time.perf_counter()
    ours_out = [r["text"] for r in pipeline.predict(dev, batch_size=16, **options)]
    ours_s = time.perf_counter() - start
    hf_model, hf_tok = pipeline.model, AutoTokenizer.from_pretrained(run.model_dir)
    start, theirs_out = time.perf_counter(), []
    with torch.inference_mode():
        for i in range(0, len(dev), 16):
            batch = hf_tok(dev[i : i + 16], return_tensors="pt", padding=True, truncation=True, max_length=128)
            out = hf_model.generate(**batch.to(hf_model.device), do_sample=False, **options)
            theirs_out += hf_tok.batch_decode(out, skip_special_tokens=True)
    theirs_s = time.perf_counter() - start
    same = sum(a.strip() == b.strip() for a, b in zip(ours_out, theirs_out))
    report("seq2seq_generate", "examples_per_s",
           {"examples_per_s": len(dev) / ours_s, "steps": len(dev), "seconds": ours_s},
           {"examples_per_s": len(dev) / theirs_s, "steps": len(dev), "seconds": theirs_s},
           {"model": f"the T5 {args.size} trained above", "beams": args.beams,
            "max_new_tokens": args.max_new_tokens, "sentences": len(dev), "batch_size": 16,
            "same_outputs": f"{same}/{len(dev)}", "command": command}, theirs_name="HF generate (file order)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
