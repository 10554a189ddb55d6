"""Extractive question answering at inference: start/end logits of every window, then each example's best span.

Span decoding (as Hugging Face's ``run_qa`` post-processing and its question-answering pipeline do it): in each
window, the ``n_best`` likeliest start tokens and end tokens of the context are paired; a pair is a candidate when it
lies inside the context, ends at or after its start and spans at most ``max_answer_length`` tokens. A candidate's
score is P(start) x P(end), each a softmax over the window's context tokens and its [CLS] token (where a window that
does not hold the answer was taught to point), so scores compare across the windows of one example; the best
candidate over all of them is the answer, cut from the original context by its tokens' character offsets.
"""

from __future__ import annotations

import numpy as np
import torch

from lmforge.data.batching import pad_batch, sorted_batches
from lmforge.data.qa_windows import Windows


@torch.no_grad()
def window_logits(model, windows: Windows, pad_id: int, batch_size: int = 32) -> tuple[list[np.ndarray],
                                                                                         list[np.ndarray]]:
    """Start and end logits of every window (each ``[T]``, T its own length) from an HF question-answering model."""
    device = next(model.parameters()).device
    starts: list[np.ndarray] = [np.empty(0)] * len(windows)
    ends: list[np.ndarray] = [np.empty(0)] * len(windows)
    for rows in sorted_batches([len(x) for x in windows.input_ids], batch_size):
        ids, mask = pad_batch([windows.input_ids[i] for i in rows], pad_id)
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if windows.token_type_ids is not None:
            inputs["token_type_ids"] = pad_batch([windows.token_type_ids[i] for i in rows], 0)[0].to(device)
        out = model(**inputs)
        start, end = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()  # [B, T]
        for row, i in enumerate(rows):
            n = len(windows.input_ids[i])
            starts[i], ends[i] = start[row, :n], end[row, :n]
    return starts, ends


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def best_answers(start_logits: list[np.ndarray], end_logits: list[np.ndarray], windows: Windows,
                 contexts: list[str], *, n_best: int = 20, max_answer_length: int = 30,
                 cls_index: int = 0) -> list[dict]:
    """Per example: ``{"answer", "score", "start", "end"}`` (start/end: character offsets in its context, ``answer ==
    context[start:end]``). An example without any context token answers ``""`` with score 0."""
    best: list[dict] = [{"answer": "", "score": 0.0, "start": 0, "end": 0} for _ in contexts]
    best_score = np.full(len(contexts), -1.0)  # the best candidate's so far; -1: none yet
    for w, e in enumerate(windows.example):
        spans = windows.offsets[w]
        context = np.flatnonzero(spans[:, 0] >= 0)  # token positions of the context in this window
        if not len(context):
            continue
        keep = np.concatenate([[cls_index], context])
        p_start = np.zeros(len(spans))
        p_end = np.zeros(len(spans))
        p_start[keep], p_end[keep] = _softmax(start_logits[w][keep]), _softmax(end_logits[w][keep])
        k = min(n_best, len(context))
        top_start = context[np.argsort(-start_logits[w][context], kind="stable")[:k]]  # [k]
        top_end = context[np.argsort(-end_logits[w][context], kind="stable")[:k]]  # [k]
        length = top_end[None, :] - top_start[:, None] + 1  # [k, k]
        scores = np.where((length >= 1) & (length <= max_answer_length),
                          p_start[top_start][:, None] * p_end[top_end][None, :], -1.0)
        i, j = np.unravel_index(int(scores.argmax()), scores.shape)
        if scores[i, j] <= best_score[e]:  # no candidate here (-1), or a better one in an earlier window
            continue
        best_score[e] = scores[i, j]
        first, last = int(spans[top_start[i], 0]), int(spans[top_end[j], 1])
        best[e] = {"answer": contexts[e][first:last], "score": float(scores[i, j]), "start": first, "end": last}
    return best
