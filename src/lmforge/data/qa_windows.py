"""Question + context as the windows an extractive QA model reads, and where the answer is in each.

Each (question, context) pair is tokenized as ``[CLS] question [SEP] context [SEP]`` by the model's fast tokenizer
with ``truncation="only_second"``: a context longer than one window is read as overlapping windows
(``return_overflowing_tokens``; neighbouring windows share ``stride`` context tokens), each holding the whole
question. ``return_offsets_mapping`` keeps each context token's character span, so an answer found as tokens maps
back to the exact characters of the original context.

A question is cut, or refused, past ``max_length - 1.5 x stride - specials`` tokens (:func:`question_limit`): a longer
one would leave a window too few context tokens to move on (the tokenizer needs more than ``stride``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.errors import LmforgeError


class QuestionTooLong(LmforgeError):
    """A question is longer than a window can hold beside the context (and the caller did not ask to cut it)."""


@dataclass
class Windows:
    """The windows of a batch of examples. ``offsets[w]`` is ``[T, 2]`` character spans in the context, ``-1`` for
    tokens that are not context (the question, special tokens)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None  # None for models without segments (RoBERTa, DistilBERT)
    offsets: list[np.ndarray]
    example: np.ndarray  # [W]: the example each window belongs to
    count: int  # examples

    def __len__(self) -> int:
        return len(self.input_ids)

    def per_example(self) -> np.ndarray:
        """How many windows each example is read as."""
        return np.bincount(self.example, minlength=self.count)


def question_limit(tokenizer, max_length: int, stride: int) -> int:
    """The most question tokens a window of ``max_length`` holds: enough context tokens must be left for each window
    to move on by at least half the stride (more than the stride alone is what the tokenizer needs; a question that
    left just that would read a context one token per window)."""
    return max_length - stride - max(1, stride // 2) - tokenizer.num_special_tokens_to_add(pair=True)


def check_fast(tokenizer, name: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise LmforgeError(f"{name} has no fast tokenizer (tokenizer.json); extractive QA needs its character "
                           "offsets", fix="use a model folder with a tokenizer.json (BERT-style encoders have one)")


def _cut_questions(tokenizer, questions: list[str], limit: int, truncate: bool) -> list[str]:
    """Questions (leading whitespace dropped, as it only wastes tokens) cut to ``limit`` tokens, or QuestionTooLong."""
    questions = [q.lstrip() for q in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    over = [(i, len(ids)) for i, ids in enumerate(encoded["input_ids"]) if len(ids) > limit]
    if over and not truncate:
        raise QuestionTooLong(
            f"{len(over)} question{'s are' if len(over) > 1 else ' is'} longer than the {limit} tokens a window "
            "holds beside the context: " + ", ".join(f"question {i} has {n}" for i, n in over[:5])
            + (" ..." if len(over) > 5 else ""),
            fix="shorten the question, or send \"truncate\": true to cut it")
    for i, _ in over:
        questions[i] = questions[i][: encoded["offset_mapping"][i][limit - 1][1]]
    return questions


def encode_windows(tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int, *,
                   truncate: bool = True) -> Windows:
    """Every example's windows. ``truncate``: cut questions longer than :func:`question_limit` (else refuse them)."""
    questions = _cut_questions(tokenizer, questions, question_limit(tokenizer, max_length, stride), truncate)
    encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False, verbose=False)
    offsets = []
    for w, spans in enumerate(encoded["offset_mapping"]):
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        in_context = np.asarray([s == 1 for s in encoded.sequence_ids(w)])
        spans[~in_context] = -1
        offsets.append(spans)
    types = encoded.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Windows(encoded["input_ids"], types, offsets, np.asarray(encoded["overflow_to_sample_mapping"],
                                                                    dtype=np.int64), len(questions))


def answer_positions(windows: Windows, starts: list[int], ends: list[int], cls_index: int = 0) -> tuple[np.ndarray,
                                                                                                         np.ndarray]:
    """Training labels: per window, the tokens where its example's answer (characters ``[start, end)`` of the
    context) starts and ends; ``cls_index`` for both when the answer is not wholly inside the window."""
    first, last = np.full(len(windows), cls_index), np.full(len(windows), cls_index)
    for w, (spans, e) in enumerate(zip(windows.offsets, windows.example)):
        context = np.flatnonzero(spans[:, 0] >= 0)
        if not len(context):
            continue
        s, t = starts[e], ends[e]
        ctx = spans[context]  # [C, 2], increasing
        if ctx[0, 0] > s or ctx[-1, 1] < t:
            continue  # the answer is not (wholly) in this window
        first[w] = context[np.searchsorted(ctx[:, 0], s, side="right") - 1]  # the token holding its first character
        last[w] = context[np.searchsorted(ctx[:, 1], t, side="left")]  # the token holding its last character
    return first, last
