"""SQuAD v1.1 EM and F1 equal the official evaluation script's, on predictions chosen to trip a re-implementation."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from lmforge.evaluation.squad import best_over_golds, normalize_answer, squad_scores


# ---- the official SQuAD v1.1 evaluation script (evaluate-v1.1.py), its logic verbatim ----
def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_f1_score(prediction, ground_truth):
    prediction_tokens = ref_normalize_answer(prediction).split()
    ground_truth_tokens = ref_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def ref_exact_match_score(prediction, ground_truth):
    return ref_normalize_answer(prediction) == ref_normalize_answer(ground_truth)


def ref_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def ref_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x["text"], qa["answers"]))  # noqa: C417 - verbatim
                prediction = predictions[qa["id"]]
                exact_match += ref_metric_max_over_ground_truths(ref_exact_match_score, prediction, ground_truths)
                f1 += ref_metric_max_over_ground_truths(ref_f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


# (prediction, gold answers): articles, punctuation, case, whitespace, repeated tokens, empties, unicode
CASES = [
    ("the Virgin Mary", ["a golden statue of the Virgin Mary", "Virgin Mary"]),
    ("A golden statue", ["a golden statue of the Virgin Mary"]),
    ("Saint Bernadette Soubirous.", ["Saint Bernadette Soubirous"]),
    ("  saint   BERNADETTE\tsoubirous ", ["Saint Bernadette Soubirous"]),
    ("the the the", ["the"]),  # normalizes to nothing: EM 1, F1 0 (as the v1.1 script scores it)
    ("", ["an answer"]),
    ("an", ["a"]),
    ("theatre", ["the atre"]),  # 'the' inside a word is no article
    ("rock 'n' roll", ["rock n roll"]),
    ("U.S. Army", ["US army", "the U.S. Army"]),
    ("1,000 troops", ["1000 troops"]),
    ("New York New York", ["New York"]),  # repeated tokens count as bags, not sets
    ("York New", ["New York"]),
    ("Brontë—sisters", ["Brontë sisters"]),  # a non-ASCII dash is not string.punctuation
    ("Ángel Falls", ["angel falls", "Ángel Falls"]),
    ("café", ["CAFÉ"]),
    ("in 1858", ["1858", "in 1858 at Lourdes"]),
    ("an apple a day", ["apple day", "an apple"]),
    ("a\u00a0b c", ["b c"]),  # a no-break space is whitespace to str.split
    ("(1882)", ["1882"]),
]


@pytest.mark.parametrize(("prediction", "golds"), CASES, ids=[repr(c[0]) for c in CASES])
def test_each_question_scores_as_the_official_script(prediction, golds):
    ours = best_over_golds(prediction, golds)
    assert normalize_answer(prediction) == ref_normalize_answer(prediction)
    assert ours["exact_match"] == float(ref_metric_max_over_ground_truths(ref_exact_match_score, prediction, golds))
    assert ours["f1"] == ref_metric_max_over_ground_truths(ref_f1_score, prediction, golds)


def test_corpus_scores_are_the_official_percentages():
    dataset = [{"paragraphs": [{"qas": [{"id": str(i), "answers": [{"text": g} for g in golds]}
                                        for i, (_, golds) in enumerate(CASES)]}]}]
    predictions = {str(i): p for i, (p, _) in enumerate(CASES)}
    ours = squad_scores([p for p, _ in CASES], [g for _, g in CASES])
    reference = ref_evaluate(dataset, predictions)
    assert ours == reference
    assert ours["exact_match"] == 100.0 * 13 / 20  # by hand: 13 of the cases above match once normalized
    assert squad_scores(["Denver Broncos"], [["Denver Broncos"]]) == {"exact_match": 100.0, "f1": 100.0}


def test_a_question_without_gold_answers_is_refused():
    with pytest.raises(ValueError, match="at least one gold answer"):
        best_over_golds("x", [])
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        squad_scores(["a", "b"], [["a"]])
