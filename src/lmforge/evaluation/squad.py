"""Exact match and F1 of extractive answers, as the official SQuAD v1.1 evaluation script computes them.

An answer is normalized (lowercased; ASCII punctuation removed; the articles a, an, the removed; whitespace collapsed)
before it is compared: EM is 1 when the normalized prediction equals a normalized gold answer, F1 is the harmonic
mean of precision and recall over the two token bags. Each question scores its best gold answer; corpus scores are
means in percent (0-100), as the script prints them. (The `evaluate` package's ``squad`` metric wraps the same script;
it is not needed here.)
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalization: lowercase, drop punctuation, drop articles, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-bag F1 of two answers (0 when they share no token, as in the v1.1 script: even when both are empty)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    shared = sum((Counter(predicted) & Counter(wanted)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(prediction: str, golds: list[str]) -> dict[str, float]:
    """One question's EM and F1 (0 or 1, and 0-1): each the best over its gold answers."""
    if not golds:
        raise ValueError("a question needs at least one gold answer")
    return {"exact_match": max(exact_match(prediction, g) for g in golds),
            "f1": max(f1(prediction, g) for g in golds)}


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Corpus EM and F1 in percent (the official script's ``exact_match`` and ``f1``)."""
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions: need as many, at least one")
    scores = [best_over_golds(p, g) for p, g in zip(predictions, golds)]
    return {key: 100.0 * sum(s[key] for s in scores) / len(scores) for key in ("exact_match", "f1")}
