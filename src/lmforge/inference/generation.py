"""Text generation with a KV cache: sampling (temperature, top-k, top-p, repetition penalty), stop sequences, seeds,
streaming, batches with left padding.

Three engines feed the same decoding loop:

* ``StaticGPT2Engine`` -- our own decode path for GPT-2-architecture models (what ``lmforge pretrain --objective clm``
  builds): the HF weights are used as they are, the KV cache is preallocated once, and each step is a handful of fused
  matmuls with no per-step allocation of masks or cache objects. This is where generation speed comes from.
* ``StaticLlamaEngine`` -- the same for Llama-architecture models (SmolLM2): RoPE, grouped-query attention, RMSNorm,
  fused projections, and weights in int8 (CPU) or bfloat16 (GPU) unless asked for float32.
* ``HFEngine`` -- any other Hugging Face causal LM, through its own ``forward`` with ``past_key_values``.

Sampling is vectorized over the batch; only stop-sequence matching and streaming look at text, once per step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # T -> 0 is greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off (HF semantics: divide positive logits, multiply negative ones)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks only: always generate max_new_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class RowOptions:
    """What one sequence of a batch may have of its own when requests are decoded together (the server batches
    concurrent requests): its length limit, stop strings and a cancel flag (a client that went away)."""

    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    cancel: threading.Event | None = None


@dataclass
class Delta:
    """A piece of streamed output for one sequence; ``finish_reason`` is set exactly once, on its last delta,
    which also carries the token counts."""

    index: int
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


# ------------------------------------------------------------------------------------------ engines
class HFEngine:
    """Any HF causal LM through its own forward and cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        import inspect

        self.model = model
        # transformers renamed past_key_values to cache (5.2x); the GPU image's 5.17 still has the old name
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _cache_of(self, out):
        return getattr(out, "cache", None) if self.cache_arg == "cache" else out.past_key_values

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_total: int) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        self.cache, self.mask, self.position = self._cache_of(out), mask, positions[:, -1]
        return out.logits[:, -1].float()  # [B, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.position = self.position + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.position[:, None],
                         use_cache=True, **{self.cache_arg: self.cache})
        self.cache = self._cache_of(out)
        return out.logits[:, -1].float()


class StaticGPT2Engine:
    """A lean GPT-2 forward over the HF weights with a preallocated KV cache.

    Cache slots are shared by the batch: prompts are left-padded to the same width, padded slots are masked out, and
    step n of decoding writes slot ``T + n`` for every row; positions (for the position embedding) are per row.
    """

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        config = getattr(model, "config", None)
        return (
            type(model).__name__ == "GPT2LMHeadModel"
            and config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
            and config.scale_attn_weights
            and not config.scale_attn_by_inverse_layer_idx
            and not config.reorder_and_upcast_attn
        )

    def __init__(self, model: torch.nn.Module) -> None:
        t = model.transformer
        self.config = model.config
        self.heads = model.config.n_head
        self.eps = model.config.layer_norm_epsilon
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.head_weight = model.lm_head.weight
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        self.layers = [
            (b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
             b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
             b.mlp.c_proj.weight, b.mlp.c_proj.bias)
            for b in t.h
        ]

    def _run(self, x: torch.Tensor, start: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C] embeddings of the tokens written to slots start..start+T-1; returns hidden [B, T, C]."""
        batch, width, channels = x.shape
        head_dim = channels // self.heads
        end = start + width
        for i, (g1, b1, w_qkv, b_qkv, w_o, b_o, g2, b2, w_fc, b_fc, w_pr, b_pr) in enumerate(self.layers):
            h = F.layer_norm(x, (channels,), g1, b1, self.eps)
            qkv = torch.addmm(b_qkv, h.view(-1, channels), w_qkv).view(batch, width, 3, self.heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
            self.k[i, :, :, start:end] = k
            self.v[i, :, :, start:end] = v
            a = F.scaled_dot_product_attention(q, self.k[i, :, :, :end], self.v[i, :, :, :end], attn_mask=attn_mask)
            a = a.transpose(1, 2).reshape(-1, channels)  # [B*T, C]
            x = x + torch.addmm(b_o, a, w_o).view(batch, width, channels)
            h = F.layer_norm(x, (channels,), g2, b2, self.eps).view(-1, channels)
            h = F.gelu(torch.addmm(b_fc, h, w_fc), approximate="tanh")
            x = x + torch.addmm(b_pr, h, w_pr).view(batch, width, channels)
        return F.layer_norm(x, (channels,), *self.ln_f, self.eps)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_total: int) -> torch.Tensor:
        batch, width = ids.shape
        channels = self.wte.shape[1]
        head_dim = channels // self.heads
        if max_total > self.wpe.shape[0]:
            raise ValueError(f"prompt + new tokens ({max_total}) exceed the model's {self.wpe.shape[0]} positions")
        shape = (len(self.layers), batch, self.heads, max_total, head_dim)
        self.k = torch.zeros(shape, dtype=self.wte.dtype, device=ids.device)
        self.v = torch.zeros(shape, dtype=self.wte.dtype, device=ids.device)
        self.valid = torch.zeros((batch, max_total), dtype=torch.bool, device=ids.device)  # slots a query may see
        self.valid[:, :width] = mask.bool()
        self.slot = width
        self.position = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        x = self.wte[ids] + self.wpe[self.position]  # [B, T, C]
        causal = torch.ones((width, width), dtype=torch.bool, device=ids.device).tril()
        # pad queries may see themselves, so no attention row is empty (an empty row would give NaNs)
        allowed = (causal[None] & self.valid[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        hidden = self._run(x, 0, allowed[:, None])  # [B, T, C]
        self.position = self.position[:, -1]
        return (hidden[:, -1] @ self.head_weight.T).float()  # [B, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position = self.position + 1
        self.valid[:, self.slot] = True
        x = (self.wte[tokens] + self.wpe[self.position])[:, None]  # [B, 1, C]
        hidden = self._run(x, self.slot, self.valid[:, None, None, : self.slot + 1])
        self.slot += 1
        return (hidden[:, -1] @ self.head_weight.T).float()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: int8 weights with bfloat16 activations on a CPU (decoding there reads every weight once per token:
    a quarter of the bytes of float32), bfloat16 on a GPU."""
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" else "int8"


class Linear:
    """``x @ W.T`` with W kept in float32, bfloat16, or int8 (per output channel scales; bfloat16 activations,
    through PyTorch's int8 weight-only matmul kernel)."""

    def __init__(self, weight: torch.Tensor, precision: str) -> None:
        self.precision = precision
        if precision == "int8":
            scales = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127  # [N]
            self.weight = torch.round(weight.float() / scales[:, None]).clamp(-127, 127).to(torch.int8)
            self.scales = scales.to(torch.bfloat16)
        else:
            self.weight = weight.to(torch.float32 if precision == "float32" else torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision != "int8":
            return F.linear(x, self.weight)
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        return torch._weight_int8pack_mm(flat, self.weight, self.scales).view(*x.shape[:-1], -1)


class StaticLlamaEngine:
    """A lean Llama forward (RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied or separate head) over
    the HF weights, with a preallocated KV cache: what SmolLM2 and other Llama-architecture decoders run on.

    The q/k/v and gate/up projections are each fused into one matmul; rotary angles come from the model's own
    ``inv_freq``. Left-padded batches as in :class:`StaticGPT2Engine`. ``precision`` keeps the weights in float32,
    bfloat16 or int8 (see :func:`resolve_precision`); norms and rotary positions are computed in float32 either way.
    """

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        config = getattr(model, "config", None)
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        return (
            type(model).__name__ == "LlamaForCausalLM"
            and config.hidden_act == "silu"
            and not getattr(config, "attention_bias", False)
            and not getattr(config, "mlp_bias", False)
            and rope.get("rope_type", "default") == "default"
        )

    def __init__(self, model: torch.nn.Module, precision: str = "auto") -> None:
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.float()  # [D/2]
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.max_positions = config.max_position_embeddings
        weight = model.model.embed_tokens.weight
        self.precision = resolve_precision(precision, weight.device)
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.bfloat16}[self.precision]
        linear = lambda w: Linear(w.detach(), self.precision)
        self.embed = weight.detach().to(self.dtype)
        self.head = linear(model.lm_head.weight)
        self.final_norm = model.model.norm.weight.detach().float()
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight.detach().float(),
                linear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),  # [(H + 2 kvH) * D, C]
                linear(a.o_proj.weight),
                layer.post_attention_layernorm.weight.detach().float(),
                linear(torch.cat([m.gate_proj.weight, m.up_proj.weight])),  # [2 I, C]
                linear(m.down_proj.weight),
            ))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], weight, self.eps).to(self.dtype)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(self.dtype)

    def _run(self, x: torch.Tensor, positions: torch.Tensor, start: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C] embeddings of the tokens for slots start..start+T-1 at ``positions`` [B, T]."""
        batch, width = x.shape[:2]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        end = start + width
        freqs = positions[..., None].float() * self.inv_freq  # [B, T, D/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, D]
        cos, sin = angles.cos() * self.rope_scale, angles.sin() * self.rope_scale
        split = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        for i, (w_in, w_qkv, w_o, w_post, w_gate_up, w_down) in enumerate(self.layers):
            q, k, v = w_qkv(self._norm(x, w_in)).split(split, dim=-1)
            q = self._rotate(q.view(batch, width, heads, head_dim).transpose(1, 2), cos, sin)  # [B, H, T, D]
            k = self._rotate(k.view(batch, width, kv_heads, head_dim).transpose(1, 2), cos, sin)  # [B, kvH, T, D]
            self.k[i, :, :, start:end] = k
            self.v[i, :, :, start:end] = v.view(batch, width, kv_heads, head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, self.k[i, :, :, :end], self.v[i, :, :, :end], attn_mask=attn_mask,
                                               enable_gqa=True)  # [B, H, T, D]
            x = x + w_o(a.transpose(1, 2).reshape(batch, width, heads * head_dim))
            gate, up = w_gate_up(self._norm(x, w_post)).chunk(2, dim=-1)
            x = x + w_down(F.silu(gate) * up)
        return self._norm(x, self.final_norm)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_total: int) -> torch.Tensor:
        batch, width = ids.shape
        if max_total > self.max_positions:
            raise ValueError(f"prompt + new tokens ({max_total}) exceed the model's {self.max_positions} positions")
        shape = (len(self.layers), batch, self.kv_heads, max_total, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=ids.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=ids.device)
        self.valid = torch.zeros((batch, max_total), dtype=torch.bool, device=ids.device)  # slots a query may see
        self.valid[:, :width] = mask.bool()
        self.slot = width
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        causal = torch.ones((width, width), dtype=torch.bool, device=ids.device).tril()
        # pad queries may see themselves, so no attention row is empty (an empty row would give NaNs)
        allowed = (causal[None] & self.valid[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        hidden = self._run(self.embed[ids], positions, 0, allowed[:, None])  # [B, T, C]
        self.position = positions[:, -1]
        return self.head(hidden[:, -1]).float()  # [B, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position = self.position + 1
        self.valid[:, self.slot] = True
        hidden = self._run(self.embed[tokens][:, None], self.position[:, None], self.slot,
                           self.valid[:, None, None, : self.slot + 1])
        self.slot += 1
        return self.head(hidden[:, -1]).float()


STATIC_ENGINES = (StaticGPT2Engine, StaticLlamaEngine)


# ------------------------------------------------------------------------------------------ sampling
def shape_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None) -> torch.Tensor:
    """Repetition penalty, temperature, top-k and top-p on [B, V] logits (vectorized)."""
    if seen is not None and params.repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > params.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: argmax, or a draw from the softmax. Extreme settings (a penalty near 0, a huge
    logit over a tiny temperature) can leave a row with +inf or NaN logits, or none finite, whose softmax is NaN and
    makes ``multinomial`` raise: such a row falls back to its most likely token, with no host sync."""
    best = logits.nan_to_num(nan=float("-inf")).argmax(-1)  # [B]; argmax would take a NaN for the maximum
    if params.greedy:
        return best
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    broken = ~torch.isfinite(probs).all(-1, keepdim=True)  # [B, 1]
    probs = torch.where(broken, F.one_hot(best, probs.shape[-1]).to(probs.dtype), probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------------ the loop
class _Row:
    """Per-sequence text state: incremental decoding, stop sequences, what was already streamed."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.generated = 0  # tokens produced for this row, an end-of-sequence token included
        self.sent = 0
        self.text = ""
        self.finish: str | None = None

    def add(self, token: int) -> None:
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                self.finish = "stop"
                return

    def pending(self, final: bool) -> str:
        """New text that is safe to send: not a possible start of a stop sequence, not a half UTF-8 character."""
        end = len(self.text)
        if not final:
            if self.text.endswith("\ufffd"):
                end -= 1
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if self.text[end - k : end] == s[:k]:
                        end -= k
                        break
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece


class TextGenerator:
    """Generate from a causal LM and its tokenizer; ``stream`` yields Deltas as tokens are produced."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device | None = None,
                 engine: str = "auto", precision: str = "auto") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device or next(model.parameters()).device
        static = next((e for e in STATIC_ENGINES if e.supports(model)), None)
        if engine == "static" and static is None:
            raise ValueError(f"no static-cache engine for {type(model).__name__}")
        self.static = static if engine in ("auto", "static") else None
        self.engine_name = "static" if self.static is not None else "hf"
        self.precision = precision  # weights of the Llama engine (see resolve_precision); GPT-2 runs as loaded
        self._prepared = None  # the static engine, built once (it holds its own copy of the weights)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos += config_eos if isinstance(config_eos, list) else ([config_eos] if config_eos is not None else [])
        self.eos_ids = sorted({int(e) for e in eos})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        self.context = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()

    def _engine(self):
        if self.static is None:
            return HFEngine(self.model)
        if self._prepared is None:
            self._prepared = (StaticLlamaEngine(self.model, self.precision) if self.static is StaticLlamaEngine
                              else self.static(self.model))
        return self._prepared

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def stream(self, prompts: list[str] | list[list[int]], params: SamplingParams,
               cancel: threading.Event | None = None, rows: list[RowOptions] | None = None) -> Iterator[Delta]:
        """Decode ``prompts`` as one left-padded batch. ``params`` sets the sampling for all of them; ``rows`` (one
        per prompt) may give each its own max_new_tokens, stop strings and cancel flag instead of ``params``'s."""
        encoded = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        rows = rows or [RowOptions(params.max_new_tokens, params.stop, cancel) for _ in encoded]
        if any(len(e) == 0 for e in encoded):
            bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.pad_id
            encoded = [e or [bos] for e in encoded]
        batch, width = len(encoded), max(len(e) for e in encoded)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for r, e in enumerate(encoded):  # left padding: every row's last prompt token sits in the last column
            ids[r, width - len(e):] = torch.tensor(e)
            mask[r, width - len(e):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        limits = [max(1, min(o.max_new_tokens, self.context - width)) for o in rows]
        cancels = [o.cancel for o in rows]
        rows = [_Row(self.tokenizer, o.stop) for o in rows]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros((batch, vocab), dtype=torch.bool, device=self.device)
            seen.scatter_(1, ids, mask.bool())
        eos = torch.tensor(self.eos_ids or [-1], device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        max_new = max(limits)
        with self.lock:  # one generation at a time per model: caches and weights are shared
            engine = self._engine()
            logits = engine.prefill(ids, mask, width + max_new)
            for step in range(max_new):
                tokens = choose(shape_logits(logits, params, seen), params, generator)  # [B]
                if seen is not None:
                    seen[torch.arange(batch, device=self.device), tokens] = True
                hit_eos = torch.isin(tokens, eos) & ~done if not params.ignore_eos else torch.zeros_like(done)
                host_tokens = tokens.tolist()  # one host sync per step: text decoding needs the ids
                hit = hit_eos.tolist()
                for r, row in enumerate(rows):
                    if row.finish is not None:
                        continue
                    row.generated += 1
                    if hit[r]:
                        row.finish = "stop"
                    else:
                        row.add(host_tokens[r])
                    if row.finish is None and row.generated >= limits[r]:
                        row.finish = "length"
                    if row.finish is None and cancels[r] is not None and cancels[r].is_set():
                        row.finish = "cancelled"  # its client went away: the others go on
                    piece = row.pending(final=row.finish is not None)
                    if row.finish:
                        yield Delta(r, piece, row.finish, len(encoded[r]), row.generated)
                    elif piece:
                        yield Delta(r, piece)
                done = torch.tensor([row.finish is not None for row in rows], device=self.device)
                if bool(done.all()):
                    break
                logits = engine.step(torch.where(done, torch.full_like(tokens, self.pad_id), tokens))
        for r, row in enumerate(rows):  # cancelled: close every open sequence exactly once
            if row.finish is None:
                row.finish = "cancelled"
                yield Delta(r, row.pending(final=True), row.finish, len(encoded[r]), row.generated)

    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams) -> list[Completion]:
        out = [Completion("", "length", 0, 0) for _ in prompts]
        for delta in self.stream(prompts, params):
            out[delta.index].text += delta.text
            if delta.finish_reason:
                out[delta.index].finish_reason = delta.finish_reason
                out[delta.index].prompt_tokens = delta.prompt_tokens
                out[delta.index].completion_tokens = delta.completion_tokens
        return out
