"""Generation throughput: lmforge's generator vs Hugging Face ``generate`` on the same model and prompts.

Greedy decoding of ``--new-tokens`` tokens (end-of-text ignored on both sides so the work is equal), at batch 1 and
batch 8 (left-padded real prompts from the corpus). Model: a run dir (``--run``) or a fresh GPT-2 of ``--size``.

    python benchmarks/bench_generate.py [--run RUN | --size mini] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, hardware

PROMPTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Fellow-Citizens of the Senate and House of Representatives:",
    "The family of Dashwood had long been settled in Sussex.",
    "A list is a mutable sequence type, typically used to store collections",
    "We must remember that the strength of our country",
    "Elinor saw, with concern, the excess of her sister's sensibility;",
    "The standard library contains built-in modules that provide access to system functionality",
    "You will be successful in your work.",
]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None)
    parser.add_argument("--size", default="mini")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.inference.generation import SamplingParams, TextGenerator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.run:
        path = Path(args.run) / "model" if (Path(args.run) / "model").exists() else Path(args.run)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        name = str(args.run)
    else:
        from lmforge.config import TokenizerTrainConfig
        from lmforge.data.tokenizer import train_tokenizer
        from lmforge.models import build_gpt

        tok_dir = train_tokenizer(TokenizerTrainConfig(corpus=["corpus"], kind="bpe", vocab_size=16000,
                                                       out=Path(tempfile.mkdtemp()) / "tok"))
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        torch.manual_seed(0)
        model = build_gpt(args.size, tokenizer, 1024).to(dtype)
        name = f"fresh GPT-2 {args.size}"
    model.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ours = TextGenerator(model, tokenizer, device)
    tokenizer.padding_side = "left"
    rows = {}
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        hf_kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
                     "pad_token_id": tokenizer.pad_token_id}
        with torch.inference_mode():
            ours.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True))  # warm up
            model.generate(**enc, **{**hf_kwargs, "max_new_tokens": 8, "min_new_tokens": 8})
            timings = {"lmforge": [], "hf": []}
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                out = ours.generate(prompts, params)
                sync()
                timings["lmforge"].append(time.perf_counter() - start)
                assert all(o.completion_tokens == args.new_tokens for o in out)
                start = time.perf_counter()
                model.generate(**enc, **hf_kwargs)
                sync()
                timings["hf"].append(time.perf_counter() - start)
        new = batch * args.new_tokens
        rows[batch] = {k: new / min(v) for k, v in timings.items()}
    print(f"\n== generation on {hardware()}: {name} ({n_params / 1e6:.1f}M parameters), greedy, "
          f"{args.new_tokens} new tokens, engine '{ours.engine_name}'")
    print(f"   {'batch':>5s} {'HF generate tok/s':>18s} {'lmforge tok/s':>14s} {'ratio':>6s}")
    for batch, r in rows.items():
        print(f"   {batch:5d} {r['hf']:18.1f} {r['lmforge']:14.1f} {r['lmforge'] / r['hf']:5.2f}x")
    OUT.mkdir(exist_ok=True)
    (OUT / "generate.json").write_text(json.dumps({
        "benchmark": "generate", "hardware": hardware(), "model": name, "parameters": n_params,
        "new_tokens": args.new_tokens, "engine": ours.engine_name,
        "results": {str(b): {**r, "ratio": r["lmforge"] / r["hf"]} for b, r in rows.items()},
        "command": "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
