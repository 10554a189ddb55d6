"""Load test of `lmforge serve` on loopback: requests/s and p50/p99 latency with micro-batching on and off.

Bounded in count and time. Each request classifies one real movie review; C clients send concurrently.

    python benchmarks/bench_serve.py [--run RUN] [--requests 300] [--concurrency 16] [--max-seconds 60]

Without --run, a MiniLM classifier is fine-tuned for a few steps first (its accuracy does not matter here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serve.live import LiveServer


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=60)
    args = parser.parse_args()

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
