"""Why a classifier decided: a score per input word, and what its attention looked at.

Attribution methods come from Captum. ``integrated-gradients`` integrates the gradient of the class probability
along a straight path from a baseline (every word replaced by padding; [CLS] and [SEP] kept) to the input, in the
embedding space (``LayerIntegratedGradients`` on the input embeddings). ``occlusion`` removes one word at a time
(``FeatureAblation`` with one feature per word: its subword tokens replaced by [MASK], else padding) and scores the
drop in the class probability. Subword scores are summed into the words they make up (the tokenizer's offsets map
them back to the text). A positive score pushes toward the explained class.

Attention: the weights softmax(QKᵀ/√d) of every layer and head for the input (``output_attentions`` of the eager
implementation), as a [layers][heads][tokens][tokens] array and a heatmap PNG.

Faithfulness (:func:`deletion_curves`): removing the top-k attributed words should lower the predicted class's
probability more than removing k random words; the mean drop per k, and the area under each curve, say how much.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError

METHODS = ("integrated-gradients", "occlusion")


class Explainer:
    """Attributions and attention for a sequence classifier (a classify run or an HF folder)."""

    def __init__(self, model_dir: str | Path, info: dict | None = None, device: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification

        from lmforge.models import from_pretrained, load_tokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        if not getattr(self.tokenizer, "is_fast", False):
            raise LmforgeError(f"{self.model_dir} has no fast tokenizer: words cannot be mapped back to the text",
                               fix="save the tokenizer with tokenizer.json")
        # eager attention: the one implementation that returns its weights
        self.model = from_pretrained(AutoModelForSequenceClassification, self.model_dir, attn_implementation="eager")
        self.model.to(device or "cpu").eval()
        self.device = next(self.model.parameters()).device
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        config = (info or {}).get("config") or {}
        limit = min(int(self.tokenizer.model_max_length or 512), self.model.config.max_position_embeddings)
        self.max_length = min(int(config.get("max_length") or limit), limit)

    # ------------------------------------------------------------------ pieces
    def _encode(self, text: str) -> dict:
        if not text.strip():
            raise LmforgeError("the text is empty", fix="give a text to explain")
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        word_ids = enc.word_ids()
        offsets = enc["offset_mapping"]
        spans: dict[int, list[int]] = {}
        for position, word in enumerate(word_ids):
            if word is not None:
                start, end = offsets[position]
                span = spans.setdefault(word, [start, end])
                span[0], span[1] = min(span[0], start), max(span[1], end)
        words = sorted(spans)
        group = [0 if w is None else 1 + words.index(w) for w in word_ids]  # 0: special tokens
        full = len(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        return {"ids": torch.tensor([enc["input_ids"]], device=self.device), "group": group,
                "spans": [tuple(spans[w]) for w in words], "truncated": full > len(enc["input_ids"])}

    def _probabilities(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(ids) if mask is None else mask
        return torch.softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)

    def target_index(self, target: str | None, probabilities: torch.Tensor) -> int:
        if target is None:
            return int(probabilities.argmax())
        if target not in self.labels:
            raise LmforgeError(f"unknown label '{target}'", where="--target",
                               fix=f"use one of the model's labels: {', '.join(self.labels)}")
        return self.labels.index(target)

    def _fill_id(self) -> int:
        tok = self.tokenizer
        return tok.mask_token_id if tok.mask_token_id is not None else (tok.pad_token_id or 0)

    def word_scores(self, encoded: dict, method: str, target: int, steps: int = 32) -> np.ndarray:
        """One score per word (``encoded["spans"]``) for class ``target``."""
        from captum.attr import FeatureAblation, LayerIntegratedGradients

        if method not in METHODS:
            raise LmforgeError(f"unknown method '{method}'", where="--method", fix=f"use one of {', '.join(METHODS)}")
        ids, group = encoded["ids"], torch.tensor([encoded["group"]], device=self.device)
        special = group == 0
        forward = lambda x: self._probabilities(x)
        if method == "integrated-gradients":
            pad = self.tokenizer.pad_token_id or 0
            baseline = torch.where(special, ids, torch.full_like(ids, pad))
            ig = LayerIntegratedGradients(forward, self.model.get_input_embeddings())
            token_scores = ig.attribute(ids, baselines=baseline, target=target, n_steps=steps,
                                        internal_batch_size=steps).sum(-1)[0]
        else:
            ablation = FeatureAblation(forward)
            token_scores = ablation.attribute(ids, baselines=self._fill_id(), target=target,
                                              feature_mask=torch.where(special, torch.zeros_like(group), group))[0]
        per_word = np.zeros(len(encoded["spans"]), dtype=np.float64)
        first = {}
        for position, g in enumerate(encoded["group"]):
            if g:
                if method == "integrated-gradients":
                    per_word[g - 1] += float(token_scores[position])  # subwords add up
                elif g not in first:
                    first[g] = position
                    per_word[g - 1] = float(token_scores[position])  # every token of a word holds its drop
        return per_word

    # ------------------------------------------------------------------ the public answer
    @torch.no_grad()
    def attention(self, encoded: dict) -> np.ndarray:
        """[layers, heads, tokens, tokens]: each row a token's attention over the tokens (rows sum to 1)."""
        out = self.model(input_ids=encoded["ids"], output_attentions=True)
        return torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()

    def explain(self, text: str, *, method: str = "integrated-gradients", target: str | None = None,
                steps: int = 32, attention: bool = False) -> dict[str, Any]:
        encoded = self._encode(text)
        with torch.no_grad():
            probabilities = self._probabilities(encoded["ids"])[0]
        index = self.target_index(target, probabilities)
        scores = self.word_scores(encoded, method, index, steps)
        result = {
            "label": self.labels[int(probabilities.argmax())],
            "probabilities": {label: float(p) for label, p in zip(self.labels, probabilities)},
            "target": self.labels[index], "method": method, "truncated": encoded["truncated"],
            "words": [{"word": text[s:e], "start": s, "end": e, "score": float(v)}
                      for (s, e), v in zip(encoded["spans"], scores)],
        }
        if attention:
            weights = self.attention(encoded)
            result["attention"] = {
                "tokens": self.tokenizer.convert_ids_to_tokens(encoded["ids"][0].tolist()),
                "layers": int(weights.shape[0]), "heads": int(weights.shape[1]),
                "weights": np.round(weights, 4).tolist()}
        return result


def attention_png(result: dict, path: str | Path, layer: int | None = None) -> Path:
    """A heatmap PNG of ``result["attention"]``: every head of one layer (default: the last), tokens on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attention = result["attention"]
    weights = np.asarray(attention["weights"])
    layer = weights.shape[0] - 1 if layer is None else layer
    if not 0 <= layer < weights.shape[0]:
        raise LmforgeError(f"layer {layer} does not exist (the model has {weights.shape[0]})", where="--layer",
                           fix=f"use 0 to {weights.shape[0] - 1}")
    heads, tokens = weights.shape[1], attention["tokens"]
    columns = min(heads, 4)
    rows = -(-heads // columns)
    size = max(3.0, 0.22 * len(tokens))
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    for h in range(rows * columns):
        ax = axes[h // columns][h % columns]
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(weights[layer, h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.suptitle(f"attention weights (rows: each token's attention over the tokens) — {result['label']}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def html_report(result: dict, text: str) -> str:
    """A standalone HTML page: the text with each word shaded by its score (green toward the class, red against)."""
    import html

    top = max((abs(w["score"]) for w in result["words"]), default=0.0) or 1.0
    parts, cursor = [], 0
    for w in result["words"]:
        parts.append(html.escape(text[cursor : w["start"]]))
        alpha = min(1.0, abs(w["score"]) / top)
        color = f"rgba(21,127,59,{alpha:.2f})" if w["score"] >= 0 else f"rgba(180,35,24,{alpha:.2f})"
        parts.append(f'<span style="background:{color}" title="{w["score"]:+.4f}">'
                     f'{html.escape(text[w["start"] : w["end"]])}</span>')
        cursor = w["end"]
    parts.append(html.escape(text[cursor:]))
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
    return (f"<!doctype html><meta charset='utf-8'><title>lmforge explain</title>"
            f"<body style='font-family:system-ui;max-width:50rem;margin:2rem auto;line-height:1.8'>"
            f"<p><b>{html.escape(result['label'])}</b> ({html.escape(probs)}); scores for "
            f"<b>{html.escape(result['target'])}</b> by {html.escape(result['method'])}</p>"
            f"<p>{''.join(parts)}</p></body>")


def deletion_curves(explainer: Explainer, texts: list[str], method: str, *, ks: tuple[int, ...] = (1, 2, 3, 4, 5),
                    random_draws: int = 3, seed: int = 0, steps: int = 32) -> dict:
    """The deletion test: per k, the mean drop of the predicted class's probability when the k words with the
    highest attribution toward it are removed, and when k random words are; the area under each curve (the mean
    over k). Texts with fewer than max(ks) + 1 words are skipped."""
    rng = np.random.default_rng(seed)
    top_drops = {k: [] for k in ks}
    random_drops = {k: [] for k in ks}
    used = 0
    for text in texts:
        encoded = explainer._encode(text)
        spans = encoded["spans"]
        if len(spans) <= max(ks):
            continue
        used += 1
        with torch.no_grad():
            base = explainer._probabilities(encoded["ids"])[0]
        target = int(base.argmax())
        order = np.argsort(-explainer.word_scores(encoded, method, target, steps), kind="stable")
        variants, keys = [], []
        for k in ks:
            variants.append(_without(text, [spans[i] for i in order[:k]]))
            keys.append(("top", k))
            for _ in range(random_draws):
                variants.append(_without(text, [spans[i] for i in rng.choice(len(spans), size=k, replace=False)]))
                keys.append(("random", k))
        batch = explainer.tokenizer(variants, truncation=True, max_length=explainer.max_length, padding=True,
                                    return_tensors="pt").to(explainer.device)
        with torch.no_grad():
            probs = explainer._probabilities(batch["input_ids"], batch["attention_mask"])[:, target]
        for (kind, k), p in zip(keys, probs.tolist()):
            (top_drops if kind == "top" else random_drops)[k].append(float(base[target]) - p)
    if not used:
        raise LmforgeError(f"no text has more than {max(ks)} words to remove", fix="give longer texts")
    top = [float(np.mean(top_drops[k])) for k in ks]
    rand = [float(np.mean(random_drops[k])) for k in ks]
    return {"method": method, "texts": used, "k": list(ks), "top_drop": top, "random_drop": rand,
            "top_area": float(np.mean(top)), "random_area": float(np.mean(rand))}


def _without(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with these character spans cut out (and the doubled spaces left behind closed)."""
    out, cursor = [], 0
    for start, end in sorted(spans):
        out.append(text[cursor:start])
        cursor = end
    out.append(text[cursor:])
    return " ".join("".join(out).split())
