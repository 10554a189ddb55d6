"""Retrieval quality of a knowledge base on question -> answer pairs (``lmforge evaluate KB --data python-faq``).

Each answer is added to a copy of the KB as a passage (the KB itself is left as it was); each question is a query
whose one right passage is its own answer, among the KB's passages and the other answers. Reported per mode (bm25,
dense, hybrid): recall@1/5/10, MRR@10 and the query latency (p50, p99).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lmforge.data.readers import Problems, read_records, resolve
from lmforge.kb import MODES, KnowledgeBase, kb_precision
from lmforge.kb.store import Passage

KS = (1, 5, 10)


def read_qa_pairs(spec: str, question_field: str = "question", answer_field: str = "answer") -> list[dict]:
    source = resolve(spec)
    problems = Problems()
    pairs = []
    for record in read_records(source, problems):
        q, a = record.data.get(question_field), record.data.get(answer_field)
        if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
            missing = question_field if not isinstance(q, str) or not q.strip() else answer_field
            problems.add(f"{record.where}: no '{missing}' text (fields present: {', '.join(record.data) or '(none)'})")
            continue
        pairs.append({"question": q.strip(), "answer": a.strip(), "title": str(record.data.get("section") or ""),
                      "where": record.where})
    problems.raise_if_any(f"cannot read question/answer pairs from {spec}",
                          fix=f"each row needs '{question_field}' and '{answer_field}' (--text-field / --label-field)")
    return pairs


def evaluate_kb(kb: str | Path, data: str = "python-faq", *, store: str | None = None, question_field: str | None = None,
                answer_field: str | None = None, limit: int | None = None) -> dict:
    pairs = read_qa_pairs(data, question_field or "question", answer_field or "answer")[: limit or None]
    base = KnowledgeBase.open(kb, store)
    meta = base.meta
    with base.scratch() as copy:  # the answers go into a throwaway copy: the KB itself is left as it was
        gold = [f"eval:{i}" for i in range(len(pairs))]
        started = time.perf_counter()
        added = copy.add([Passage(g, p["title"], p["answer"]) for g, p in zip(gold, pairs)])
        add_s = time.perf_counter() - started
        modes = {}
        for mode in MODES:
            ranks, latencies = [], []
            for pair, want in zip(pairs, gold):
                t = time.perf_counter()
                hits = copy.search(pair["question"], k=max(KS), mode=mode)
                latencies.append(time.perf_counter() - t)
                ids = [h.id for h in hits]
                ranks.append(ids.index(want) + 1 if want in ids else None)
            modes[mode] = {
                **{f"recall@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in KS},
                f"mrr@{max(KS)}": sum(1.0 / r for r in ranks if r is not None) / len(ranks),
                "latency_p50_ms": float(np.percentile(latencies, 50) * 1000),
                "latency_p99_ms": float(np.percentile(latencies, 99) * 1000),
            }
        passages = copy.store.count
    base.close()
    return {"run": base.where, "task": "kb", "data": data, "n": len(pairs), "passages": passages,
            "answers_added": added, "embed_answers_s": round(add_s, 1), "model": meta["model"],
            "embed_max_length": meta["max_length"], "embed_precision": kb_precision(meta), "modes": modes}
