"""Knowledge-base retrieval: lmforge's KB against the plain way users do it today, on the same passages.

Passages: the bundled Python docs (9,752) plus the Python FAQ answers; queries: the FAQ questions, each one's right
passage its own answer (as ``lmforge evaluate KB --data python-faq``). Side by side, recall@5 and queries per second:

- BM25: lmforge (SQLite FTS5, porter stemming) vs ``rank_bm25.BM25Okapi`` over lowercased word tokens;
- dense: lmforge (float16 memory-mapped vectors) vs brute-force numpy cosine over the same vectors in float32;
- hybrid: lmforge's reciprocal-rank fusion (no plain counterpart: the numbers stand alone).

Query embedding is counted on both dense sides (the same encoder). The KB is built first if missing, and its build
time reported.

    python benchmarks/bench_kb.py [--kb benchmarks/out/kb-python-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, hardware

WORD = re.compile(r"\w+")


def timed(queries: list[str], search) -> tuple[list[list[str]], float]:
    start = time.perf_counter()
    found = [search(q) for q in queries]
    return found, len(queries) / (time.perf_counter() - start)


def recall(found: list[list[str]], gold: list[str], k: int = 5) -> float:
    return sum(g in f[:k] for f, g in zip(found, gold)) / len(gold)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kb", type=Path, default=OUT / "kb-python-docs")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--ask", type=int, default=0, metavar="N",
                        help="also time `kb ask` on the first N FAQ questions (their answers joined to the KB)")
    parser.add_argument("--reader", default="smollm2", help="the reader --ask uses (smollm2, gemma3, a chat run)")
    args = parser.parse_args()

    from rank_bm25 import BM25Okapi

    from lmforge.kb import KnowledgeBase
    from lmforge.kb.evaluate import read_qa_pairs
    from lmforge.kb.store import DB, META, VECTORS, Passage

    build = None
    if not (args.kb / META).exists():
        build = KnowledgeBase.build(args.kb, ["python-docs-kb"], show_progress=False)
    pairs = read_qa_pairs("python-faq")
    with tempfile.TemporaryDirectory() as scratch:  # the FAQ answers join a copy of the KB
        import shutil

        for name in (DB, VECTORS, META):
            shutil.copy2(args.kb / name, Path(scratch) / name)
        kb = KnowledgeBase.open(scratch)
        gold = [f"faq:{i}" for i in range(len(pairs))]
        kb.add([Passage(g, p["title"], p["answer"]) for g, p in zip(gold, pairs)])
        queries = [p["question"] for p in pairs]
        rows = kb.store.fetch(list(range(kb.store.count)))
        ids = [p.id for p in rows]
        results = {}
        for mode in ("bm25", "dense", "hybrid"):
            kb.search(queries[0], k=args.k, mode=mode)  # warm
            found, qps = timed(queries, lambda q, m=mode: [h.id for h in kb.search(q, k=args.k, mode=m)])
            results[f"lmforge {mode}"] = {"recall@5": recall(found, gold), "queries_per_s": qps}

        start = time.perf_counter()
        plain = BM25Okapi([WORD.findall(kb.as_text(p).lower()) for p in rows])
        index_s = time.perf_counter() - start
        found, qps = timed(queries, lambda q: [ids[i] for i in np.argsort(-plain.get_scores(WORD.findall(q.lower())))[: args.k]])
        results["rank_bm25"] = {"recall@5": recall(found, gold), "queries_per_s": qps, "index_s": index_s}

        matrix = np.asarray(kb.store.vectors, dtype=np.float32)
        embedder = kb.embedder

        def brute(q: str) -> list[str]:
            scores = matrix @ embedder.embed([q])[0]
            return [ids[i] for i in np.argsort(-scores)[: args.k]]

        found, qps = timed(queries, brute)
        results["numpy cosine"] = {"recall@5": recall(found, gold), "queries_per_s": qps}
        passages = kb.store.count
        size_mb = kb.size_bytes() / 1e6
        asked = time_ask(kb, queries[: args.ask], gold, args.reader) if args.ask else None
        kb.close()

    print(f"\n== kb retrieval on {hardware()}: {len(queries)} FAQ questions over {passages:,} passages")
    if build:
        print(f"   built {args.kb} in {build['seconds']} s (embedding {build['embed_s']} s), {build['size_mb']} MB")
    print(f"   {'':20s} {'recall@5':>9s} {'queries/s':>10s}")
    for name, r in results.items():
        print(f"   {name:20s} {r['recall@5']:9.3f} {r['queries_per_s']:10.1f}")
    print(f"   ratio lmforge/rank_bm25 queries/s: {results['lmforge bm25']['queries_per_s'] / results['rank_bm25']['queries_per_s']:.1f}x"
          f"; lmforge dense/numpy: {results['lmforge dense']['queries_per_s'] / results['numpy cosine']['queries_per_s']:.2f}x")
    if asked:
        print(f"   kb ask, {args.reader} reader, 4 passages, {asked['questions']} questions: time to first token p50 "
              f"{asked['ttft_p50_s']:.2f} s, p99 {asked['ttft_p99_s']:.2f} s; whole answer p50 {asked['total_p50_s']:.1f} s; "
              f"answers {', '.join(f'{k}: {v}' for k, v in asked['citing'].items())}")
    OUT.mkdir(exist_ok=True)
    (OUT / "kb.json").write_text(json.dumps({"benchmark": "kb", "hardware": hardware(), "passages": passages,
                                             "queries": len(queries), "kb_size_mb": size_mb, "build": build,
                                             "results": results, "ask": asked,
                                             "command": "python benchmarks/bench_kb.py " + " ".join(sys.argv[1:])},
                                            indent=2))


def time_ask(kb, questions: list[str], gold: list[str], reader_name: str) -> dict:
    """Time to the first streamed piece of the answer, and to its end, and how often the answer cites the passage
    that holds the answer (the FAQ's own answer, joined to the KB): by the reader's own [n], or matched by lmforge;
    'answer passage given' counts the questions whose answer passage was among those the reader read."""
    from lmforge.kb.ask import ask
    from lmforge.stages import load

    reader = load(reader_name)
    first, total, examples = [], [], []
    citing = {"cite the answer passage": 0, "answer passage given": 0, "by the reader": 0, "matched only": 0,
              "repeat stopped": 0, "not found": 0, "empty answer": 0}
    for question, answer_id in zip(questions, gold):
        start, seen, given = time.perf_counter(), None, []
        for event in ask(kb, question, reader, k=4, max_new_tokens=128):
            if event["type"] == "passages":
                given = [p["id"] for p in event["passages"]]
            if event["type"] == "delta" and seen is None:
                seen = time.perf_counter() - start
            if event["type"] == "done":
                own = any(not c["matched"] for c in event["citations"])
                citing["cite the answer passage"] += any(c["id"] == answer_id for c in event["citations"])
                citing["answer passage given"] += answer_id in given
                citing["by the reader"] += own
                citing["matched only"] += bool(event["citations"]) and not own
                citing["repeat stopped"] += bool(event.get("repeat_stopped"))
                citing["not found"] += not event["found"]
                examples.append({"question": question, "answer": event["answer"][:300]})
        total.append(time.perf_counter() - start)
        citing["empty answer"] += seen is None
        first.append(total[-1] if seen is None else seen)  # an empty answer: its first (and last) event is the end
    return {"reader": reader_name, "questions": len(questions), "ttft_p50_s": float(np.percentile(first, 50)),
            "ttft_p99_s": float(np.percentile(first, 99)), "total_p50_s": float(np.percentile(total, 50)),
            "citing": citing, "examples": examples[:5]}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
