"""BLEU, chrF and ROUGE equal the reference libraries' on the same outputs; the baselines."""

from __future__ import annotations

import pytest

from lmforge.evaluation.seq2seq import bleu_chrf, lead_1, rouge
from tests.conftest import BUNDLED, read_jsonl_gz


@pytest.fixture(scope="module")
def pairs():
    rows = read_jsonl_gz(BUNDLED / "translation" / "bible_en_es.dev.jsonl.gz")
    # outputs of varying quality: the reference, the reference cut short, another verse, the source
    outputs = [r["es"] if i % 4 == 0 else " ".join(r["es"].split()[: 1 + i % 7]) if i % 4 == 1
               else rows[(i + 1) % len(rows)]["es"] if i % 4 == 2 else r["en"] for i, r in enumerate(rows)]
    return outputs, [r["es"] for r in rows]


def test_bleu_and_chrf_equal_sacrebleus_own(pairs):
    import sacrebleu

    outputs, references = pairs
    ours = bleu_chrf(outputs, references)
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [references]).score, abs=1e-9)
    assert ours["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outputs, [references]).score, abs=1e-9)
    assert 5 < ours["bleu"] < 60 and ours["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert ours["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert bleu_chrf(references, references)["bleu"] == pytest.approx(100)


def test_rouge_equals_rouge_scores_own_with_stemming_and_newline_sentences(pairs):
    from rouge_score import rouge_scorer

    outputs, references = pairs
    ours = rouge(outputs, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = sum(scorer.score(r, o)[name].fmeasure for o, r in zip(outputs, references)) / len(outputs)
        assert ours[name] == pytest.approx(100 * expected)
    # stemming: "running dogs" and "run dog" are the same unigrams
    assert rouge(["running dogs"], ["run dog"])["rouge1"] == pytest.approx(100)
    # Lsum matches sentence by sentence at newlines; L takes one sequence
    two = rouge(["c d\na b"], ["a b\nc d"])
    assert two["rougeLsum"] == pytest.approx(100) and two["rougeL"] == pytest.approx(50)


def test_lead_1_is_the_first_sentence():
    assert lead_1("Fast CSV parser. It reads files.\nMore here.") == "Fast CSV parser."
    assert lead_1("first line\nsecond line") == "first line"
    assert lead_1("e.g. a library. Next") == "e.g. a library."


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 outputs for 1 references"):
        bleu_chrf(["a", "b"], ["a"])
