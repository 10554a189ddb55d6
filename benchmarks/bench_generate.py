"""Generation throughput: lmforge's generator vs Hugging Face ``generate`` (and llama.cpp) on the same model and prompts.

Greedy decoding of ``--new-tokens`` tokens (end-of-text ignored so the work is equal), at batch 1 and batch 8
(left-padded real prompts). Each side runs in its own process, so its peak memory (RSS) is its own. Models:

    python benchmarks/bench_generate.py [--size mini]                  # a fresh GPT-2 of that size, corpus prompts
    python benchmarks/bench_generate.py --model RUN_OR_FOLDER          # any causal LM lmforge loads
    python benchmarks/bench_generate.py --model smollm2 [--llama-cpp PYTHON]
    python benchmarks/bench_generate.py --model gemma3 [--llama-cpp PYTHON]

With ``--model smollm2`` the prompts are chat prompts in the model's template (gemma3, a base model, gets the corpus
prompts after its begin-of-text token), and ``--llama-cpp`` names a Python that has llama-cpp-python (not a dependency of lmforge; build it once in its own venv, about 10 minutes on 2 cores:
``python3 -m venv benchmarks/out/llamacpp-venv && benchmarks/out/llamacpp-venv/bin/pip install llama-cpp-python``):
it decodes the very same GGUF file, one sequence at a time (its Python API has no batched generation).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, hardware

CORPUS_PROMPTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Fellow-Citizens of the Senate and House of Representatives:",
    "The family of Dashwood had long been settled in Sussex.",
    "A list is a mutable sequence type, typically used to store collections",
    "We must remember that the strength of our country",
    "Elinor saw, with concern, the excess of her sister's sensibility;",
    "The standard library contains built-in modules that provide access to system functionality",
    "You will be successful in your work.",
]
CHAT_PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain photosynthesis in one paragraph.",
    "Give me three tips for sleeping better.",
    "Write a Python function that reverses a string.",
    "What are the main causes of the French Revolution?",
    "Describe a cat to someone who has never seen one.",
    "How does a bicycle stay upright?",
    "Suggest a name for a coffee shop and explain it.",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        from lmforge.models import resolve_model_path

        path = resolve_model_path(args.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        name = args.model
    else:
        from lmforge.config import TokenizerTrainConfig
        from lmforge.data.tokenizer import train_tokenizer
        from lmforge.models import build_gpt

        tok_dir = train_tokenizer(TokenizerTrainConfig(corpus=["corpus"], kind="bpe", vocab_size=16000,
                                                       out=Path(tempfile.mkdtemp()) / "tok"), show_progress=False)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        torch.manual_seed(0)
        model = build_gpt(args.size, tokenizer, 1024)
        name = f"fresh GPT-2 {args.size}"
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    return model.to(device).eval(), tokenizer, name, device


def _prompts(tokenizer, chat: bool) -> list[list[int]]:
    if not chat:  # with the begin-of-text token where the tokenizer adds one (Gemma needs it), as lmforge sends it
        return [tokenizer(p)["input_ids"] for p in CORPUS_PROMPTS]
    out = []
    for text in CHAT_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def side_torch(args) -> dict:
    """lmforge's TextGenerator or HF ``generate`` on the model: tokens/s and time to first token at batch 1 and 8."""
    import torch

    from lmforge.inference.generation import SamplingParams, TextGenerator

    model, tokenizer, name, device = _load(args)
    prompts = _prompts(tokenizer, chat=bool(tokenizer.chat_template) and args.model is not None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = {"model": name, "parameters": sum(p.numel() for p in model.parameters())}
    generator = TextGenerator(model, tokenizer, device, precision=args.precision)
    if args.side == "lmforge":
        results["engine"] = generator.engine_name
        results["precision"] = getattr(generator._engine(), "precision", str(next(model.parameters()).dtype))

        def run(batch_prompts, new_tokens):
            return generator.generate(batch_prompts, SamplingParams(max_new_tokens=new_tokens, temperature=0,
                                                                    ignore_eos=True))
    else:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def run(batch_prompts, new_tokens):
            width = max(len(p) for p in batch_prompts)
            ids = torch.full((len(batch_prompts), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(batch_prompts):  # left padding, as lmforge does
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            return model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    with torch.inference_mode():
        for batch in (1, 8):
            chosen = prompts[:batch]
            run(chosen, 8)  # warm up
            best, first = float("inf"), float("inf")
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                run(chosen, 1)
                sync()
                first = min(first, time.perf_counter() - start)
                start = time.perf_counter()
                run(chosen, args.new_tokens)
                sync()
                best = min(best, time.perf_counter() - start)
            results[str(batch)] = {"tokens_per_s": batch * args.new_tokens / best, "first_token_s": first}
    results["peak_rss_mb"] = peak_rss_mb()
    return results


LLAMA_CPP_SIDE = r"""
import json, resource, sys, time
from llama_cpp import Llama
gguf, new_tokens, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.stdin.read())
llm = Llama(model_path=gguf, n_threads=threads, n_ctx=1024, verbose=False)
def run(tokens, n):
    llm.reset()
    out, start, first = 0, time.perf_counter(), None
    for token in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        out += 1
        if first is None:
            first = time.perf_counter() - start
        if out == n:
            break
    return time.perf_counter() - start, first
run(prompts[0], 8)
best, first = float("inf"), float("inf")
for _ in range(repeats):
    total, f = run(prompts[0], new_tokens)
    best, first = min(best, total), min(first, f)
eight = sum(run(p, new_tokens)[0] for p in prompts[:8])  # one stream after another
print(json.dumps({"1": {"tokens_per_s": new_tokens / best, "first_token_s": first},
                  "8": {"tokens_per_s": 8 * new_tokens / eight, "first_token_s": first},
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def embedded_gguf(name: str) -> Path:
    """The embedded model's GGUF file: in its package, or its chunks joined once under benchmarks/out."""
    import shutil

    from lmforge.models import EMBEDDED, embedded_package, verified_chunks

    embedded = EMBEDDED[name]
    if not embedded.chunks:
        return embedded_package(name) / embedded.gguf
    joined = OUT / embedded.gguf
    if not joined.exists():
        OUT.mkdir(exist_ok=True)
        with open(joined.with_suffix(".tmp"), "wb") as out:
            for chunk in verified_chunks(name):
                with open(chunk, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        joined.with_suffix(".tmp").rename(joined)
    return joined


def side_llama_cpp(args, python: str) -> dict:
    from transformers import AutoTokenizer

    from lmforge.models import resolve_model_path

    gguf = embedded_gguf(args.model)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    prompts = _prompts(tokenizer, chat=bool(tokenizer.chat_template))
    done = subprocess.run([python, "-c", LLAMA_CPP_SIDE, str(gguf), str(args.new_tokens), str(args.repeats),
                           str(os.cpu_count() or 2)], input=json.dumps(prompts), capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="run dir, HF folder, or smollm2 (default: a fresh GPT-2)")
    parser.add_argument("--size", default="mini")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="lmforge's decoding weights (auto, float32, ...)")
    parser.add_argument("--llama-cpp", default=None, help="a Python with llama-cpp-python (smollm2, gemma3)")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side_torch(args)))
        return
    sides = {}
    for side in ("lmforge", "hf"):
        command = [sys.executable, __file__, "--side", side, "--size", args.size, "--new-tokens", str(args.new_tokens),
                   "--repeats", str(args.repeats), "--precision", args.precision]
        if args.model:
            command += ["--model", args.model]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        sides[side] = json.loads(done.stdout.strip().splitlines()[-1])
    if args.llama_cpp:
        sides["llama.cpp"] = side_llama_cpp(args, args.llama_cpp)
    ours = sides["lmforge"]
    print(f"\n== generation on {hardware()}: {ours['model']} ({ours['parameters'] / 1e6:.1f}M parameters), greedy, "
          f"{args.new_tokens} new tokens; lmforge engine '{ours['engine']}', weights {ours['precision']}")
    print(f"   {'side':>10s} {'batch':>5s} {'tokens/s':>9s} {'vs HF':>6s} {'first token':>12s} {'peak RSS':>9s}")
    for name, result in sides.items():
        for batch in ("1", "8"):
            row = result[batch]
            print(f"   {name:>10s} {batch:>5s} {row['tokens_per_s']:9.1f} "
                  f"{row['tokens_per_s'] / sides['hf'][batch]['tokens_per_s']:5.2f}x {row['first_token_s']:11.3f}s "
                  f"{result['peak_rss_mb']:7.0f}MB")
    OUT.mkdir(exist_ok=True)
    (OUT / "generate.json").write_text(json.dumps({
        "benchmark": "generate", "hardware": hardware(), "new_tokens": args.new_tokens, "sides": sides,
        "command": "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:])}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
