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

# in place: the activation's input is the intermediate product, fresh and read by nothing else (a 25 MB tensor for 32
# texts of 128 tokens: writing a new one costs minilm 6 % of its time on a CPU)
ACTIVATIONS = {"gelu": torch.ops.aten.gelu_, "relu": F.relu_,
               "gelu_new": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
               "gelu_pytorch_tanh": lambda x: torch.ops.aten.gelu_(x, approximate="tanh")}


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


def pack_int8(weights: dict[str, torch.Tensor], names: list[str]) -> dict[str, tuple[object, int]] | None:
    """The linear layers ``names`` (``NAME.weight``/``NAME.bias`` in ``weights``) as int8 weights, one scale per output
    channel, packed for PyTorch's CPU int8 kernels (fbgemm, or qnnpack on ARM): ``{name: (packed, out_features)}``.
    Weights use 7 bits (±63) so that activations can use all 8: AVX2 multiplies unsigned 8-bit activations by signed
    8-bit weights and adds pairs in 16 bits, and 2·255·63 stays under 32,767 where 2·255·127 would saturate. (The
    usual alternative, 7-bit activations, moved minilm's sentence vectors three times as far from float32.)
    None where this PyTorch has no such kernels (a build without them, a future release that drops its quantized
    tensors), so callers stay in float32."""
    import warnings

    packed = {}
    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated upstream; their ops still run
            warnings.simplefilter("ignore")
            for name in names:
                weight = weights[f"{name}.weight"].float()
                scales = (weight.abs().amax(1) / 63).clamp(min=1e-8).double()
                zeros = torch.zeros(weight.shape[0], dtype=torch.long)
                quantized = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
                bias = weights.get(f"{name}.bias")
                layer = torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.float())
                torch.ops.quantized.linear_dynamic(torch.zeros(1, weight.shape[1]), layer, False)  # runs here?
                packed[name] = (layer, weight.shape[0])
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return packed or None


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for the process instead of handing it back to the OS and faulting it in again:
    a CPU forward allocates tens of MB per layer, and the page faults cost a sentence encoder about 10 % of its time
    (the docs KB's build: 154 s instead of 169). For a process that embeds a lot (``kb build``); it holds its peak
    memory until it exits. Does nothing off glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks under 1 GiB come from the heap, not their own mmap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: the heap is not trimmed until 2 GiB lie free at its top
    except (OSError, AttributeError):
        pass


def int8_linear(x: torch.Tensor, packed: tuple[object, int], lengths: list[int]) -> torch.Tensor:
    """``x [B, T, in] -> [B, T, out]`` through an int8 layer of :func:`pack_int8`, one sequence at a time over its
    real tokens only: each sequence's activations get their own 8-bit scale, never one set by the texts it is batched
    with or by padding; padding positions stay 0 (never attended to or pooled)."""
    layer, width = packed
    out = x.new_zeros(*x.shape[:-1], width)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.ops.quantized.linear_dynamic(x[i, :n].contiguous(), layer, False)
    return out


class LeanBert:
    """``hidden_states(input_ids, attention_mask) -> [B, T, H]`` with the folder's weights; eval mode (no dropout).
    With ``int8``, the encoder layers' matrix products run in int8 on the CPU where PyTorch has the kernels (the
    products 1.6x faster on AVX2, sentence embedding 1.35x; vectors at cosine ~0.994 to float32, retrieval the same:
    README); :attr:`precision` says which ran."""

    def __init__(self, model_dir: Path, device: torch.device, *, int8: bool = False) -> None:
        from safetensors.torch import load_file

        self.config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        weights = load_file(str(Path(model_dir) / "model.safetensors"), device=str(device))
        self.w = {k.removeprefix("bert."): v for k, v in weights.items()}
        self.heads = self.config["num_attention_heads"]
        self.eps = self.config["layer_norm_eps"]
        self.act = ACTIVATIONS[self.config["hidden_act"]]
        self.layers = self.config["num_hidden_layers"]
        self.int8 = None
        if int8 and torch.device(device).type == "cpu":
            names = [f"encoder.layer.{i}.{n}" for i in range(self.layers) for n in (
                "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")]
            self.int8 = pack_int8(self.w, names)
        self.precision = "int8" if self.int8 else "float32"

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _linear(self, x: torch.Tensor, name: str, lengths: list[int] | None = None) -> torch.Tensor:
        if lengths is not None and self.int8:
            return int8_linear(x, self.int8[name], lengths)
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
        lengths = None
        if self.int8:  # the int8 products run over each sequence's real tokens, which come first
            if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
                raise ValueError("int8 LeanBert needs right-padded batches (real tokens first)")
            lengths = attention_mask.sum(1).tolist()
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{n}", lengths).view(batch, width, self.heads, head_dim)
                       .transpose(1, 2) for n in ("query", "key", "value"))  # each [B, heads, T, D]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(batch, width, hidden)
            x = self._norm(self._linear(a, f"{p}.attention.output.dense", lengths) + x,
                           f"{p}.attention.output.LayerNorm")
            h = self.act(self._linear(x, f"{p}.intermediate.dense", lengths))
            x = self._norm(self._linear(h, f"{p}.output.dense", lengths) + x, f"{p}.output.LayerNorm")
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
