"""Metrics for generated text against references: sacreBLEU's BLEU and chrF (with their signature strings, so a
number says how it was computed) and ROUGE-1/2/L/Lsum from Google's ``rouge-score`` (Porter stemming on; Lsum
splits sentences at newlines, nothing is downloaded). Baselines a model must beat: copying the source (translation)
and its first sentence (lead-1, summarization).
"""

from __future__ import annotations

import re

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def bleu_chrf(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacreBLEU defaults: 13a tokenization, exp smoothing; chrF n=6, beta=2), 0-100."""
    from sacrebleu.metrics import BLEU, CHRF

    _check(hypotheses, references)
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {"bleu": bleu_score.score, "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def rouge(hypotheses: list[str], references: list[str]) -> dict:
    """Mean F-measure over the examples of ROUGE-1, -2, -L and -Lsum, 0-100."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, split_summaries=False)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        scores = scorer.score(reference, hypothesis)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / len(hypotheses) for name, total in totals.items()}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")


def lead_1(text: str) -> str:
    """The first sentence of a text (or its first line): the lead-1 summarization baseline."""
    text = text.strip()
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip() if text else ""


def _check(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} outputs for {len(references)} references: need as many, at least one")
