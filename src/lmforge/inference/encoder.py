"""A lean forward pass for BERT-architecture encoders and sequence classifiers (MiniLM, the BERTs lmforge pretrains), straight from
a Hugging Face folder: ``config.json``, ``model.safetensors`` and ``tokenizer.json``, read with ``safetensors`` and
``tokenizers``. It does not import transformers, whose BERT classes alone take ~2.8 s to import on 2 CPU cores: with
it, ``lmforge predict RUN "text"`` answers in under 2 s. The logits equal ``BertForSequenceClassification``'s (tested);
any other architecture goes through transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def supports(model_dir: Path, *, classifier: bool = True) -> bool:
    """Can the lean path run this folder? A BERT (a sequence classifier, unless ``classifier`` is off) with absolute
    positions, safetensors and a tokenizer.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return (
        config.get("model_type") == "bert"
        and (not classifier or "BertForSequenceClassification" in (config.get("architectures") or []))
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act") in ACTIVATIONS
        and not config.get("is_decoder")
        and (not classifier or config.get("problem_type") in (None, "single_label_classification"))
        and (Path(model_dir) / "model.safetensors").exists()
        and (Path(model_dir) / "tokenizer.json").exists()
    )


class LeanBert:
    """``hidden_states(input_ids, attention_mask) -> [B, T, H]`` with the folder's weights; eval mode (no dropout)."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        from safetensors.torch import load_file

        self.config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        weights = load_file(str(Path(model_dir) / "model.safetensors"), device=str(device))
        self.w = {k.removeprefix("bert."): v for k, v in weights.items()}
        self.heads = self.config["num_attention_heads"]
        self.eps = self.config["layer_norm_eps"]
        self.act = ACTIVATIONS[self.config["hidden_act"]]
        self.layers = self.config["num_hidden_layers"]

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        w = self.w
        batch, width = input_ids.shape
        positions = torch.arange(width, device=input_ids.device)
        x = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][positions]
             + w["embeddings.token_type_embeddings.weight"][0])  # [B, T, H]; one segment
        x = self._norm(x, "embeddings.LayerNorm")
        hidden = x.shape[-1]
        head_dim = hidden // self.heads
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]: padding is never attended to
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{n}").view(batch, width, self.heads, head_dim)
                       .transpose(1, 2) for n in ("query", "key", "value"))  # each [B, heads, T, D]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(batch, width, hidden)
            x = self._norm(self._linear(a, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = self.act(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


class LeanBertClassifier(LeanBert):
    """``logits(input_ids, attention_mask) -> [B, labels]``: the [CLS] position through the pooler and the head."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        super().__init__(model_dir, device)
        self.labels = [self.config["id2label"][str(i)] for i in range(len(self.config["id2label"]))]

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.hidden_states(input_ids, attention_mask)
        pooled = torch.tanh(self._linear(x[:, 0], "pooler.dense"))  # [B, H]: the [CLS] position
        return F.linear(pooled, self.w["classifier.weight"], self.w["classifier.bias"])


class FastTokenizer:
    """The folder's ``tokenizer.json`` through the tokenizers library (the same backend HF's fast tokenizer wraps)."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.backend.no_padding()
        settings_path = Path(model_dir) / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else {}
        pad = settings.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self.backend.token_to_id(pad) if pad else None
        self.model_max_length = int(settings.get("model_max_length") or 512)

    def content(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens, never cut."""
        self.backend.no_truncation()
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        """Token ids with the special tokens; cut to ``max_length`` (None: never cut)."""
        if max_length is None:
            self.backend.no_truncation()
        else:
            self.backend.enable_truncation(max_length)
        return [e.ids for e in self.backend.encode_batch(texts)]
