"""Load tests of `lmforge serve` on loopback, bounded in count and time.

Classification: requests/s and p50/p99 latency with micro-batching on and off; each request classifies one real
movie review; C clients send concurrently. Without --run, a MiniLM classifier is fine-tuned for a few steps first.

    python benchmarks/bench_serve.py [--run RUN] [--requests 300] [--concurrency 16] [--max-seconds 60]

Chat: S concurrent streaming chat completions (OpenAI route, SSE) against a generative model, e.g. the embedded
smollm2: tokens/s over all streams, p50/p95 time to first token, the longest wait for a first token, and one stream
alone (b1 tokens/s); with continuous batching (the default) and the static batcher (--scheduler static) in the same
run, and llama-cpp-python's server on the same GGUF as an anchor (--llama-cpp PYTHON, a Python with
llama-cpp-python[server], e.g. ``python3 -m venv benchmarks/out/llamacpp-venv && benchmarks/out/llamacpp-venv/bin/pip
install "llama-cpp-python[server]"``).

    python benchmarks/bench_serve.py --chat smollm2 [--streams 16] [--chat-requests 32] [--max-tokens 64]
                                     [--llama-cpp benchmarks/out/llamacpp-venv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serve.live import LiveServer, free_port


async def load(url: str, texts: list[str], total: int, concurrency: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + max_seconds

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total and time.monotonic() < deadline:
            text = texts[sent % len(texts)]
            sent += 1
            start = time.perf_counter()
            try:
                response = await http.post(url + "/v1/classify", json={"inputs": text, "truncate": True})
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await http.post(url + "/v1/classify", json={"inputs": "warm up"})
        started = time.perf_counter()
        await asyncio.gather(*[client(i, http) for i in range(concurrency)])
        elapsed = time.perf_counter() - started
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": statistics.mean(latencies) * 1000 if latencies else None}


def mean_batch(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = sum(float(v) for v in re.findall(r'lmforge_batch_size_sum\{[^}]*\} ([0-9.e+]+)', text))
    count = sum(float(v) for v in re.findall(r'lmforge_batch_size_count\{[^}]*\} ([0-9.e+]+)', text))
    return total / count if count else 0.0


CHAT_QUESTIONS = ["What is the capital of France?", "Give me two tips for learning a language.",
                  "What does a compiler do?", "Name three colors of the rainbow.", "Why is the sky blue?",
                  "Write one sentence about the sea.", "What is photosynthesis?", "How do I boil an egg?"]


async def chat_load(url: str, model: str, total: int, streams: int, max_tokens: int, max_seconds: float) -> dict:
    """``streams`` clients, each sending streaming chat completions one after another until ``total`` are sent:
    per request, the time to its first token (the wait a user sees), its whole time and its tokens."""
    records: list[dict] = []
    errors, sent = {}, 0
    deadline = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total and time.monotonic() < deadline:
            question = CHAT_QUESTIONS[sent % len(CHAT_QUESTIONS)]
            sent += 1
            body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            start, first, tokens, chunks = time.perf_counter(), None, None, 0
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                        continue
                    async for line in response.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                            chunks += 1
                            if first is None:
                                first = time.perf_counter() - start
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if first is not None:  # a server that sends no usage (llama-server): one token per content chunk
                records.append({"ttft": first, "seconds": time.perf_counter() - start,
                                "tokens": tokens if tokens is not None else chunks})

    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(streams)])
        elapsed = time.perf_counter() - started
    ttft = sorted(r["ttft"] for r in records)
    q = lambda p: ttft[min(len(ttft) - 1, int(p * len(ttft)))] if ttft else float("nan")
    tokens = sum(r["tokens"] for r in records)
    return {"requests": len(records), "errors": errors, "seconds": elapsed, "tokens": tokens,
            "tokens_per_s": tokens / elapsed, "first_token_p50_s": q(0.5), "first_token_p95_s": q(0.95),
            "first_token_max_s": ttft[-1] if ttft else float("nan"),
            "request_max_s": max((r["seconds"] for r in records), default=float("nan")),
            # one stream's decoding speed: the tokens after its first over the time after its first
            "stream_tokens_per_s": statistics.median((r["tokens"] - 1) / max(r["seconds"] - r["ttft"], 1e-9)
                                                     for r in records if r["tokens"] > 1) if records else 0.0}


def _warm(url: str, model: str) -> None:
    """A few concurrent requests, so the first measured ones pay for no first-call set-up (cache, threads)."""
    async def go() -> None:
        async with httpx.AsyncClient(timeout=600) as http:
            body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
            await asyncio.gather(*[http.post(url + "/v1/chat/completions", json=body) for _ in range(4)])
    asyncio.run(go())


class LlamaServer:
    """llama-cpp-python's OpenAI server on the same GGUF file (an anchor: llama.cpp's kernels, its own server)."""

    def __init__(self, python: str, model: str) -> None:
        from bench_generate import embedded_gguf

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(embedded_gguf(model)),
                                      "--model_alias", model, "--port", str(self.port), "--n_ctx", "4096",
                                      "--n_threads", str(os.cpu_count() or 2),
                                      # its default drops a running stream when the next request arrives
                                      "--interrupt_requests", "False"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> LlamaServer:  # noqa: PYI034 (a benchmark helper, not subclassed)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise TimeoutError("llama-server did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main_chat(args) -> None:
    """Continuous batching against the static batcher (a batch runs to its end), same model and load, one run;
    llama-cpp-python's server as an anchor with --llama-cpp."""
    sides = {
        "continuous (16 rows)": ("--scheduler", "continuous", "--generation-batch", "16"),
        "static (16 rows)": ("--scheduler", "static", "--generation-batch", "16"),
        "static (8 rows)": ("--scheduler", "static", "--generation-batch", "8"),
    }
    rows: dict[str, dict] = {}
    single: dict[str, dict] = {}

    def measure(mode: str, url: str) -> None:
        _warm(url, args.chat)
        single[mode] = asyncio.run(chat_load(url, args.chat, 8, 1, args.max_tokens, args.max_seconds))
        rows[mode] = asyncio.run(chat_load(url, args.chat, args.chat_requests, args.streams, args.max_tokens,
                                           args.max_seconds))

    for mode, flags in sides.items():
        with LiveServer(args.chat, *flags, "--max-in-flight", str(4 * args.streams)) as server:
            measure(mode, server.url)
            rows[mode]["mean_batch"] = mean_batch(server.url)
    if args.llama_cpp:
        with LlamaServer(args.llama_cpp, args.chat) as server:
            measure("llama-server (anchor)", server.url)
    print(f"\n== chat load test: {args.chat}, {args.streams} concurrent streaming clients, {args.chat_requests} chat "
          f"completions of up to {args.max_tokens} tokens (greedy), loopback, {os.cpu_count()} cores")
    print(f"   {'server':24s} {'tokens/s':>9s} {'TTFT p50':>9s} {'TTFT p95':>9s} {'max wait':>9s} {'max req':>8s} "
          f"{'b1 tok/s':>9s} {'ok':>4s}  errors")
    for mode, r in rows.items():
        print(f"   {mode:24s} {r['tokens_per_s']:9.1f} {r['first_token_p50_s']:8.2f}s {r['first_token_p95_s']:8.2f}s "
              f"{r['first_token_max_s']:8.2f}s {r['request_max_s']:7.1f}s {single[mode]['stream_tokens_per_s']:9.1f} "
              f"{r['requests']:4d}  {r['errors'] or 0}")
    base = rows["static (16 rows)"]
    cont = rows["continuous (16 rows)"]
    print(f"   continuous / static (16 rows): tokens/s {cont['tokens_per_s'] / base['tokens_per_s']:.2f}x, "
          f"TTFT p50 {base['first_token_p50_s'] / cont['first_token_p50_s']:.1f}x lower")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "serve_chat_load.json").write_text(json.dumps({"benchmark": "serve_chat_load", **vars(args),
                                                          "results": rows, "single_stream": single}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=60)
    parser.add_argument("--chat", default=None, help="a generative model to load-test with streaming chat")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chat-requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--llama-cpp", default=None, help="a Python with llama-cpp-python[server]: its server "
                        "on the same GGUF as an anchor (chat)")
    args = parser.parse_args()
    if args.chat:
        args.max_seconds = max(args.max_seconds, 600)
        main_chat(args)
        return

    run = args.run
    if run is None:
        from lmforge.tasks.classify import FinetuneClassifyConfig, finetune_classify

        run = str(Path(tempfile.mkdtemp(prefix="lmforge-bench-")) / "sentiment")
        finetune_classify(FinetuneClassifyConfig.model_validate(
            {"model": "minilm", "data": "movie-reviews", "eval": "movie-reviews:test", "out": run,
             "train": {"max_steps": 2}}), show_progress=False)
    from lmforge.data.labeled import load_text_label

    texts = load_text_label("movie-reviews:test").texts
    rows = {}
    for mode, flags in (("micro-batching on", ["--micro-batch"]), ("micro-batching off", ["--no-micro-batch"])):
        with LiveServer(f"sentiment={run}", *flags, "--max-in-flight", str(4 * args.concurrency)) as server:
            result = asyncio.run(load(server.url, texts, args.requests, args.concurrency, args.max_seconds))
            result["mean_batch"] = mean_batch(server.url)
            rows[mode] = result
    print(f"\n== serve load test: {args.requests} requests (1 review each), {args.concurrency} concurrent clients, loopback")
    print(f"   {'mode':22s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'batch':>6s} {'ok':>5s}  errors")
    for mode, r in rows.items():
        print(f"   {mode:22s} {r['requests_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['mean_batch']:6.1f} "
              f"{r['requests']:5d}  {r['errors'] or 0}")
    on, off = rows["micro-batching on"], rows["micro-batching off"]
    print(f"   throughput ratio on/off: {on['requests_per_s'] / off['requests_per_s']:.2f}x")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps({"benchmark": "serve_load", **vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
