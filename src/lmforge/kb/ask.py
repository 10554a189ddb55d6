"""Answer a question from a knowledge base: retrieve the best passages, then let a reader answer from them only.

Readers: a generative model with a chat template (the embedded ``smollm2``, or a chat run) is given the numbered
passages and asked to answer only from them, citing them as [1], [2]; its answer streams token by token. A base
model (the embedded ``gemma3``: no chat template) gets the same passages and rules as a document ending in
"Answer:", and its answer ends where it would begin another question. An
extractive QA run (``lmforge finetune qa``) picks the best span over the passages and cites the passage it came from.
When even the best passage is far from the question (cosine similarity below ``min_similarity``), the answer is
"not found in the knowledge base" and no reader is asked: it would only invent.

A small generative reader (135M parameters) tends to repeat itself and to forget the citations, so its text goes
through :class:`AnswerStream` on the way out: the answer ends where a sentence would repeat an earlier one (the
repeat is never sent) or after one that nearly does, and a sentence outside code that cites nothing gets the passage
most of its words come from (a *matched* citation, marked as such). What is streamed is exactly the final answer.
"""

from __future__ import annotations

import contextlib
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


def numbered(hits: list[Hit]) -> str:
    return "\n\n".join(f"[{n}] {h.title}\n{h.text}" if h.title else f"[{n}] {h.text}" for n, h in enumerate(hits, 1))


def instructions(question: str, hits: list[Hit]) -> list[dict]:
    """The chat turn a generative reader is given: numbered passages, the question, the rules."""
    return [{"role": "user", "content": (
        "Answer the question using only the numbered passages below. Cite the passages you use like [1] or [2]. "
        f"If they do not contain the answer, reply exactly: {NOT_FOUND}.\n\n"
        f"Passages:\n{numbered(hits)}\n\nQuestion: {question}")}]


# a base reader (no chat template: gemma3) continues a document: the passages, the rules, the question, "Answer:";
# its answer ends where it would start another question or leave a blank line
BASE_STOP = ["\nQuestion:", "\n\n"]


def document(question: str, hits: list[Hit]) -> str:
    """What a base reader is given: the same passages and rules as a chat reader, as a text to continue."""
    return (f"Passages:\n{numbered(hits)}\n\nAnswer the question in a few sentences, using only the passages above "
            f"and citing the ones you use like [1] or [2]. If they do not contain the answer, write: {NOT_FOUND}."
            f"\n\nQuestion: {question}\nAnswer:")


def render(reader: Any, question: str, hits: list[Hit]) -> list[int]:
    """A reader's prompt ids: a chat turn for a model with a chat template, else the document to continue."""
    if getattr(reader, "has_chat_template", False):
        return reader.chat_prompt(instructions(question, hits))
    return reader.prompt_ids(document(question, hits))


def cited(text: str, count: int) -> list[int]:
    """The passage numbers ``text`` cites as [n] (or [1, 2]), in order of first mention, those from 1 to ``count``."""
    seen: list[int] = []
    for group in CITATION.findall(text):
        for number in re.split(r"\s*[,;]\s*", group):
            n = int(number)
            if 1 <= n <= count and n not in seen:
                seen.append(n)
    return seen


def citations(answer: str, hits: list[Hit]) -> list[dict]:
    """The passages an answer cites as [n] (or [1, 2]), in order of first mention; numbers that name no passage
    are dropped."""
    seen = cited(answer, len(hits))
    return [{"n": n, "id": hits[n - 1].id, "title": hits[n - 1].title, "matched": False} for n in seen]


SEGMENT_END = re.compile(r"(?<=[^\d\s][.!?])\s+|\s*\n\s*")  # a sentence or a line ends here ("2. " is a list mark)
MARK_SO_FAR = re.compile(r"\s*(?:\d+[.)]?|[-*\u2022]|\[\d*\]?)?\s*")  # what a list mark or citation starts with
LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022]|\[\d+\])\s*")
MIN_WORDS = 4  # sentences shorter than this may repeat ("Example:", "}")
NEAR = 0.8  # two sentences sharing this share of their words (Jaccard) are a near repeat
MATCH = 0.5  # the share of a sentence's content words a passage must hold for a matched citation


def _normal(segment: str) -> str:
    """What makes two sentences the same: no list number or citation, case or spacing ("4. The x." == "5. The x.")."""
    text = CITATION.sub(" ", LIST_MARK.sub("", segment)).lower()
    return " ".join(text.split()).rstrip(".!?:;, ")


def content_words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in re.findall(r"[a-z0-9_]+", text.lower()) if len(w) > 2 and w not in ENGLISH_STOP_WORDS}


class AnswerStream:
    """A generative reader's deltas in, the answer's deltas out (``feed``, then ``finish``): stops before the first
    sentence that repeats an earlier one, holding back text while it could still be such a repeat, and after one
    that nearly does; appends `` [n]`` to a sentence outside code that cites nothing when passage n holds at least
    half of its content words. The output does not depend on how the text was cut into deltas."""

    def __init__(self, hits: list[Hit]) -> None:
        self.passages = [content_words(f"{h.title} {h.text}") for h in hits]
        self.seen: list[str] = []
        self.pending = ""  # the current sentence, not finished yet
        self.sent = 0  # how much of it was already given out
        self.stopped = False
        self.own: set[int] = set()  # passages the reader cited itself
        self.fences = 0  # ``` marks so far: odd inside a code block
        self.answer = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        out = []
        while not self.stopped and (end := SEGMENT_END.search(self.pending)) and end.end() < len(self.pending):
            out.append(self._close(self.pending[:end.start()], self.pending[end.start():end.end()]))
            self.pending, self.sent = self.pending[end.end():], 0
        if not self.stopped and not self._may_repeat(self.pending):
            ready = len(self.pending.rstrip())  # trailing space may yet be the gap before the next sentence
            out.append(self.pending[self.sent:ready])
            self.sent = max(self.sent, ready)
        return self._emit("".join(out))

    def finish(self) -> str:
        if self.stopped or not self.pending.strip():
            return ""
        tail = self._close(self.pending.rstrip(), "")
        self.pending = ""
        return self._emit(tail)

    def _emit(self, text: str) -> str:
        self.answer += text
        return text

    def _may_repeat(self, partial: str) -> bool:
        if not self.seen:
            return False
        if MARK_SO_FAR.fullmatch(partial):
            return True
        norm = _normal(partial)
        return any(seen.startswith(norm) for seen in self.seen)

    def _close(self, segment: str, gap: str) -> str:
        """A finished sentence: the part not yet given out, a matched citation, the gap after it; or the stop."""
        norm = _normal(segment)
        words = set(norm.split())
        if len(words) >= MIN_WORDS:
            if norm in self.seen:
                self.stopped = True
                return ""
            # a near repeat ("The yield statement is used to ..." after "The yield expression is used to ...") is
            # kept, being sent already, and ends the answer
            self.stopped = any(len(words & set(seen.split())) >= NEAR * len(words | set(seen.split()))
                               for seen in self.seen)
            self.seen.append(norm)
        text = segment[self.sent:]
        own = set(cited(segment, len(self.passages)))
        self.own |= own
        self.fences += segment.count("```")
        in_code = self.fences % 2 == 1 or segment.count("```")  # a citation would break the code
        if not own and not in_code and NOT_FOUND not in segment.lower() and (n := self._source(segment)):
            text += f" [{n}]"
        return text + ("" if self.stopped else gap)

    def _source(self, segment: str) -> int | None:
        words = content_words(segment)
        if len(words) < 3:
            return None
        shares = [len(words & passage) / len(words) for passage in self.passages]
        best = max(range(len(shares)), key=shares.__getitem__, default=None)
        return best + 1 if best is not None and shares[best] >= MATCH else None


def fit(reader: Any, question: str, hits: list[Hit], max_new_tokens: int) -> tuple[list[Hit], list[int]]:
    """The passages a generative reader is given and its prompt: as many of the best passages as fit in its context
    with room for the answer (the last one cut short if even it alone does not fit)."""
    import dataclasses

    room = max(64, int(getattr(reader, "context", 2048)) - max_new_tokens)
    for count in range(len(hits), 0, -1):
        prompt = render(reader, question, hits[:count])
        if len(prompt) <= room:
            return hits[:count], prompt
    words = hits[0].text.split()
    while len(words) > 8:
        words = words[: len(words) * 3 // 4]
        first = dataclasses.replace(hits[0], text=" ".join(words) + " ...")
        prompt = render(reader, question, [first])
        if len(prompt) <= room:
            return [first], prompt
    raise LmforgeError(f"the question does not fit in the reader's {room + max_new_tokens} tokens",
                       fix="ask a shorter question, or lower --max-new-tokens")


def reader_kind(reader: Any) -> str:
    """``generative`` or ``extractive``; anything else cannot answer from passages."""
    kind = getattr(reader, "kind", "")
    if kind == "text-generation":  # with a chat template or not (a base model continues a document)
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

    tidy = AnswerStream(hits)
    stop = [] if getattr(reader, "has_chat_template", False) else BASE_STOP
    deltas = reader.generator.stream([prompt], SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                                              stop=stop), cancel=cancel)
    with contextlib.closing(deltas):  # leaving early (a repeat) stops the decoding
        for delta in deltas:
            if text := tidy.feed(delta.text):
                yield {"type": "delta", "text": text}
            if tidy.stopped:
                break
    if text := tidy.finish():
        yield {"type": "delta", "text": text}
    answer = tidy.answer.strip()
    found = NOT_FOUND not in answer.lower()
    cited = [{**c, "matched": c["n"] not in tidy.own} for c in citations(answer, hits)] if found else []
    yield {"type": "done", "answer": answer, "found": found, "citations": cited, "repeat_stopped": tidy.stopped}
