"""Answer a question from a knowledge base: retrieve the best passages, then let a reader answer from them only.

Readers: a generative model with a chat template (the embedded ``smollm2``, or a chat run) is given the numbered
passages and asked to answer only from them, citing them as [1], [2]; its answer streams token by token. An
extractive QA run (``lmforge finetune qa``) picks the best span over the passages and cites the passage it came from.
When even the best passage is far from the question (cosine similarity below ``min_similarity``), the answer is
"not found in the knowledge base" and no reader is asked: it would only invent.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.kb import Hit, KnowledgeBase

NOT_FOUND = "not found in the knowledge base"
# the cosine similarity (minilm sentence vectors) the best passage must reach before a reader is asked; related
# passages of the Python docs score 0.4-0.8 for a question they answer, unrelated text under 0.2
MIN_SIMILARITY = 0.3
CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def instructions(question: str, hits: list[Hit]) -> list[dict]:
    """The chat turn a generative reader is given: numbered passages, the question, the rules."""
    passages = "\n\n".join(f"[{n}] {h.title}\n{h.text}" if h.title else f"[{n}] {h.text}"
                           for n, h in enumerate(hits, 1))
    return [{"role": "user", "content": (
        "Answer the question using only the numbered passages below. Cite the passages you use like [1] or [2]. "
        f"If they do not contain the answer, reply exactly: {NOT_FOUND}.\n\n"
        f"Passages:\n{passages}\n\nQuestion: {question}")}]


def citations(answer: str, hits: list[Hit]) -> list[dict]:
    """The passages an answer cites as [n] (or [1, 2]), in order of first mention; numbers that name no passage
    are dropped."""
    seen: list[int] = []
    for group in CITATION.findall(answer):
        for number in re.split(r"\s*[,;]\s*", group):
            n = int(number)
            if 1 <= n <= len(hits) and n not in seen:
                seen.append(n)
    return [{"n": n, "id": hits[n - 1].id, "title": hits[n - 1].title} for n in seen]


def fit(reader: Any, question: str, hits: list[Hit], max_new_tokens: int) -> tuple[list[Hit], list[int]]:
    """The passages a generative reader is given and its prompt: as many of the best passages as fit in its context
    with room for the answer (the last one cut short if even it alone does not fit)."""
    import dataclasses

    room = max(64, int(getattr(reader, "context", 2048)) - max_new_tokens)
    for count in range(len(hits), 0, -1):
        prompt = reader.chat_prompt(instructions(question, hits[:count]))
        if len(prompt) <= room:
            return hits[:count], prompt
    words = hits[0].text.split()
    while len(words) > 8:
        words = words[: len(words) * 3 // 4]
        first = dataclasses.replace(hits[0], text=" ".join(words) + " ...")
        prompt = reader.chat_prompt(instructions(question, [first]))
        if len(prompt) <= room:
            return [first], prompt
    raise LmforgeError(f"the question does not fit in the reader's {room + max_new_tokens} tokens",
                       fix="ask a shorter question, or lower --max-new-tokens")


def reader_kind(reader: Any) -> str:
    """``generative`` or ``extractive``; anything else cannot answer from passages."""
    kind = getattr(reader, "kind", "")
    if kind == "text-generation" and getattr(reader, "has_chat_template", False):
        return "generative"
    if kind == "question-answering":
        return "extractive"
    raise LmforgeError(f"'{getattr(reader, 'name', reader)}' cannot read passages and answer ({kind or 'unknown'})",
                       where="--reader", fix="use smollm2 (or a chat run), or an extractive QA run "
                       "(lmforge finetune qa)")


def ask(kb: KnowledgeBase, question: str, reader: Any, *, k: int = 4, mode: str = "hybrid",
        min_similarity: float = MIN_SIMILARITY, max_new_tokens: int = 256,
        cancel: threading.Event | None = None) -> Iterator[dict]:
    """Events, in order: ``{"type": "passages", "passages": [...]}`` (those the reader is given: for a generative
    one, as many as fit in its context), then ``{"type": "delta", "text"}`` as the
    answer is written, then ``{"type": "done", "answer", "found", "citations"}``."""
    kind = reader_kind(reader)
    hits = kb.search(question, k=k, mode=mode)
    prompt = None
    if kind == "generative" and hits:
        hits, prompt = fit(reader, question, hits, max_new_tokens)
    yield {"type": "passages", "passages": [{"n": n, **h.as_dict()} for n, h in enumerate(hits, 1)]}
    if not hits or max(h.similarity for h in hits) < min_similarity:
        yield {"type": "delta", "text": NOT_FOUND}
        yield {"type": "done", "answer": NOT_FOUND, "found": False, "citations": []}
        return
    if kind == "extractive":
        results = reader.predict([{"question": question, "context": h.text} for h in hits])
        best = max(range(len(results)), key=lambda i: results[i]["score"])
        answer = f"{results[best]['answer']} [{best + 1}]"
        yield {"type": "delta", "text": answer}
        yield {"type": "done", "answer": answer, "found": True, "citations": citations(answer, hits),
               "score": results[best]["score"]}
        return
    from lmforge.inference.generation import SamplingParams

    text = ""
    for delta in reader.generator.stream([prompt], SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                                         cancel=cancel):
        text += delta.text
        if delta.text:
            yield {"type": "delta", "text": delta.text}
    answer = text.strip()
    found = NOT_FOUND not in answer.lower()
    yield {"type": "done", "answer": answer, "found": found, "citations": citations(answer, hits) if found else []}
