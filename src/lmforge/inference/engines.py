"""Decode engines behind :class:`lmforge.inference.generation.TextGenerator`: each takes a left-padded batch
(``prefill``) and then one token per row per ``step``, returning the next-token logits [B, V].

* ``StaticGPT2Engine`` -- our own decode path for GPT-2-architecture models (what ``lmforge pretrain --objective clm``
  builds): the HF weights are used as they are, the KV cache is preallocated once, and each step is a handful of fused
  matmuls with no per-step allocation of masks or cache objects. This is where generation speed comes from.
* ``StaticLlamaEngine`` -- the same for Llama-architecture models (SmolLM2): RoPE, grouped-query attention, RMSNorm,
  fused projections, and weights in int8 (CPU) or bfloat16 (GPU) unless asked for float32.
* ``StaticGemma3Engine`` -- the Llama engine's cache for Gemma 3 (the embedded ``gemma3``): sliding-window and global
  layers, query/key norms, scaled embeddings, GeGLU.
* ``HFEngine`` -- any other Hugging Face causal LM, through its own ``forward`` with its cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


class KVSlots:
    """A preallocated KV cache [layers, rows, kv heads, slots, head dim] (keys and values)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def slots(self) -> int:
        return self.k.shape[3]


ALL = slice(None)  # every row of a cache


def _slot_store(cache: KVSlots, rows: slice | torch.Tensor, start: int):
    """``store(layer, k, v)`` for an engine's ``_run``: ``rows`` of the cache (:data:`ALL`, or an index) write their
    keys and values [rows, kv heads, T, D] at slots start..start+T-1 and attend to slots 0..start+T-1; a prefill
    from slot 0 attends to its own keys and values directly, in the cache's dtype."""

    def store(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = k.to(cache.k.dtype), v.to(cache.v.dtype)
        end = start + k.shape[2]
        cache.k[layer, rows, :, start:end] = k
        cache.v[layer, rows, :, start:end] = v
        if start == 0:
            return k, v
        return cache.k[layer, rows, :, :end], cache.v[layer, rows, :, :end]

    return store


class StaticEngine:
    """What the static-cache engines share: the cache and the two ways of filling it.

    * ``prefill`` / ``step``: a left-padded batch decoded in lock step (every row writes slot ``T + n`` at step n),
      what :class:`~lmforge.inference.generation.TextGenerator` runs.
    * ``new_cache`` / ``prefill_rows`` / ``decode_rows``: each row of the cache its own sequence from slot 0, at its
      own length (slot = position), what the server's continuous batching runs
      (:mod:`lmforge.inference.continuous`): rows join and leave between steps, a long prompt is read in chunks.

    An engine supplies ``_run(x, positions, store, masks, wide)`` (the layers; ``store(layer, k, v)`` writes a
    layer's keys and values and returns what its queries attend to; ``masks`` = (global, sliding-window) boolean
    masks), ``_inputs(ids, positions, wide)``, ``_logits(hidden)``, ``_cache_shape(rows, slots)``,
    ``_cache_dtype(device)`` and ``max_positions``.
    """

    max_positions: int
    precision: str = "float32"

    def _masks(self, mask: torch.Tensor, query_slots: torch.Tensor, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(global, sliding-window) masks from the global one; no sliding layers here."""
        return mask, mask

    def _wide(self, ids: torch.Tensor) -> bool:
        """A long prefill runs in float32 from the low-precision weights (see :data:`WIDE_ROWS`)."""
        return ids.numel() >= WIDE_ROWS and self.precision != "float32"

    # ------------------------------------------------------------------ a left-padded batch in lock step
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_total: int) -> torch.Tensor:
        batch, width = ids.shape
        if max_total > self.max_positions:
            raise ValueError(f"prompt + new tokens ({max_total}) exceed the model's {self.max_positions} positions")
        self.cache = KVSlots(self._cache_shape(batch, max_total), self._cache_dtype(ids.device), ids.device)
        self.valid = torch.zeros((batch, max_total), dtype=torch.bool, device=ids.device)  # slots a query may see
        self.valid[:, :width] = mask.bool()
        self.slot = width
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        causal = torch.ones((width, width), dtype=torch.bool, device=ids.device).tril()
        # pad queries may see themselves, so no attention row is empty (an empty row would give NaNs)
        allowed = (causal[None] & self.valid[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        wide = self._wide(ids)
        masks = self._masks(allowed[:, None], torch.arange(width, device=ids.device), width)
        hidden = self._run(self._inputs(ids, positions, wide), positions, _slot_store(self.cache, ALL, 0), masks, wide)
        self.position = positions[:, -1]
        return self._logits(hidden[:, -1])  # [B, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.position = self.position + 1
        self.valid[:, self.slot] = True
        positions = self.position[:, None]
        masks = self._masks(self.valid[:, None, None, : self.slot + 1],
                            torch.tensor([self.slot], device=tokens.device), self.slot + 1)
        hidden = self._run(self._inputs(tokens[:, None], positions, False), positions,
                           _slot_store(self.cache, ALL, self.slot), masks, False)
        self.slot += 1
        return self._logits(hidden[:, -1])

    # ------------------------------------------------------------------ rows of their own (continuous batching)
    def new_cache(self, rows: int, slots: int, device: torch.device | str = "cpu") -> KVSlots:
        slots = min(slots, self.max_positions)
        return KVSlots(self._cache_shape(rows, slots), self._cache_dtype(torch.device(device)), torch.device(device))

    def prefill_rows(self, cache: KVSlots, rows: list[int], chunks: list[list[int]], start: int) -> torch.Tensor:
        """Read ``chunks`` (token ids; right-padded into one batch) into cache ``rows`` at slots ``start``.., every
        row already holding ``start`` tokens; the next-token logits [len(rows), V] after each chunk's last token.
        A shorter chunk's pad slots get garbage the row's next tokens overwrite (nothing attends past a row's
        length)."""
        device = cache.k.device
        width = max(len(c) for c in chunks)
        end = start + width
        if end > cache.slots:
            raise ValueError(f"{end} tokens exceed the cache's {cache.slots} slots")
        ids = torch.zeros((len(chunks), width), dtype=torch.long)
        for i, chunk in enumerate(chunks):
            ids[i, : len(chunk)] = torch.tensor(chunk)
        ids = ids.to(device)
        index = torch.tensor(rows, device=device)
        slots = torch.arange(start, end, device=device)
        positions = slots[None].expand(len(chunks), width)

        causal = torch.arange(end, device=device)[None] <= slots[:, None]  # [T, S]
        wide = self._wide(ids)
        masks = self._masks(causal[None, None], slots, end)
        hidden = self._run(self._inputs(ids, positions, wide), positions, _slot_store(cache, index, start), masks, wide)
        last = torch.tensor([len(c) - 1 for c in chunks], device=device)
        return self._logits(hidden[torch.arange(len(chunks), device=device), last])

    def decode_rows(self, cache: KVSlots, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """One token for each of cache rows 0..len(tokens)-1, row r's written at slot ``lengths[r]`` (what it held
        before); the next-token logits [rows, V]. Rows not decoding may be fed anything: they write one slot at their
        length, which their own next tokens overwrite."""
        device = cache.k.device
        count, end = len(lengths), max(lengths) + 1
        lens = torch.tensor(lengths, device=device)
        index = torch.arange(count, device=device)

        if len(set(lengths)) == 1:  # one row, or rows in step: a slice, cheaper than a scatter per layer
            store = _slot_store(cache, slice(0, count), end - 1)
        else:
            def store(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                cache.k[layer, index, :, lens] = k[:, :, 0].to(cache.k.dtype)
                cache.v[layer, index, :, lens] = v[:, :, 0].to(cache.v.dtype)
                return cache.k[layer, :count, :, :end], cache.v[layer, :count, :, :end]

        visible = (torch.arange(end, device=device)[None] <= lens[:, None])[:, None, None]  # [B, 1, 1, S]
        positions = lens[:, None]
        masks = self._masks(visible, positions, end)
        hidden = self._run(self._inputs(tokens[:, None], positions, False), positions, store, masks, False)
        return self._logits(hidden[:, -1])


class StaticGPT2Engine(StaticEngine):
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
        self.max_positions = self.wpe.shape[0]
        self.head_weight = model.lm_head.weight
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        self.layers = [
            (b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
             b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
             b.mlp.c_proj.weight, b.mlp.c_proj.bias)
            for b in t.h
        ]

    def _cache_shape(self, rows: int, slots: int) -> tuple[int, ...]:
        return (len(self.layers), rows, self.heads, slots, self.wte.shape[1] // self.heads)

    def _cache_dtype(self, device: torch.device) -> torch.dtype:
        return self.wte.dtype

    def _inputs(self, ids: torch.Tensor, positions: torch.Tensor, wide: bool) -> torch.Tensor:
        return self.wte[ids] + self.wpe[positions]  # [B, T, C]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.head_weight.T).float()

    def _run(self, x: torch.Tensor, positions: torch.Tensor, store, masks, wide: bool = False) -> torch.Tensor:
        """x: [B, T, C] embeddings (positions included); returns hidden [B, T, C]."""
        batch, width, channels = x.shape
        head_dim = channels // self.heads
        for i, (g1, b1, w_qkv, b_qkv, w_o, b_o, g2, b2, w_fc, b_fc, w_pr, b_pr) in enumerate(self.layers):
            h = F.layer_norm(x, (channels,), g1, b1, self.eps)
            qkv = torch.addmm(b_qkv, h.view(-1, channels), w_qkv).view(batch, width, 3, self.heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
            keys, values = store(i, k, v)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=masks[0])
            a = a.transpose(1, 2).reshape(-1, channels)  # [B*T, C]
            x = x + torch.addmm(b_o, a, w_o).view(batch, width, channels)
            h = F.layer_norm(x, (channels,), g2, b2, self.eps).view(-1, channels)
            h = F.gelu(torch.addmm(b_fc, h, w_fc), approximate="tanh")
            x = x + torch.addmm(b_pr, h, w_pr).view(batch, width, channels)
        return F.layer_norm(x, (channels,), *self.ln_f, self.eps)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: int8 weights with bfloat16 activations on a CPU (decoding there reads every weight once per token:
    a quarter of the bytes of float32), bfloat16 on a GPU."""
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" else "int8"


# Rows from which a bfloat16/int8 weight is widened to float32 for the matmul instead: a long prompt's prefill. On
# CPUs without bfloat16 units (2 cores here, 400 rows x 640 x 3072) float32 GEMM runs at ~120 GFLOP/s, the int8
# weight-only kernel at ~65 and bfloat16 at ~17; at 16 rows and below int8 is the fastest (73 vs 45).
WIDE_ROWS = 128


def dynamic_int8(device: torch.device) -> bool:
    """Whether an int8 weight asked to be ``dynamic`` can run through fbgemm's dynamic int8 x int8 matmul
    (activations quantized per call, per tensor): x86 CPUs, where it is 2-4x faster than the weight-only kernel
    (AVX2 integer dot products; 16 rows x 640 x 262144, Gemma 3's head: 32 ms against 122, 2 cores here)."""
    if device.type != "cpu":
        return False
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(torch.ops.quantized, "linear_dynamic")


def _prepacked(weight: torch.Tensor, scales: torch.Tensor):
    """fbgemm's packed int8 weight, or None where this PyTorch no longer builds one."""
    import warnings

    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated, the fbgemm kernels not yet gone
            warnings.simplefilter("ignore")
            zeros = torch.zeros(len(scales), dtype=torch.long)
            q = torch.quantize_per_channel(weight.float(), scales.double(), zeros, 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, None)
    except (AttributeError, RuntimeError):
        return None


class Linear:
    """``x @ W.T`` with W kept in float32, bfloat16, or int8 (per output channel scales): PyTorch's weight-only kernel
    with bfloat16 activations, or, ``dynamic`` on an x86 CPU, fbgemm's dynamic int8 matmul (see
    :func:`dynamic_int8`; it quantizes the activations too, so it is kept for where it pays: a huge head). A prefill of :data:`WIDE_ROWS` tokens or more is multiplied by the weight widened to float32 (see
    :meth:`dense`): exact up to the weight's own rounding, and faster there than the weight-only kernel."""

    def __init__(self, weight: torch.Tensor, precision: str, dynamic: bool = False) -> None:
        self.precision, self.packed = precision, None
        if precision == "int8":
            scales = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127  # [N]
            if dynamic and dynamic_int8(weight.device):
                self.packed = _prepacked(weight, scales)
                if self.packed is not None:
                    return
            self.weight = torch.round(weight.float() / scales[:, None]).clamp(-127, 127).to(torch.int8)
            self.scales = scales.to(torch.bfloat16)
        else:
            self.weight = weight.to(torch.float32 if precision == "float32" else torch.bfloat16)

    def dense(self) -> torch.Tensor:
        """The weight in float32 (int8 times its scales)."""
        if self.packed is not None:
            return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize()
        if self.precision == "int8":
            return self.weight.float() * self.scales.float()[:, None]
        return self.weight.float()

    def __call__(self, x: torch.Tensor, wide: bool = False) -> torch.Tensor:
        """``wide``: a long prompt's prefill, multiplied in float32 by the widened weight."""
        if wide and self.precision != "float32":
            return F.linear(x.float(), self.dense())
        if self.precision != "int8":
            return F.linear(x.to(self.weight.dtype), self.weight)
        flat = x.reshape(-1, x.shape[-1])
        if self.packed is not None:  # reduce_range: 7-bit activations, which AVX2's 16-bit sums cannot overflow
            out = torch.ops.quantized.linear_dynamic(flat.float(), self.packed, True)
        else:
            out = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.weight, self.scales)
        return out.view(*x.shape[:-1], -1).to(x.dtype)


def activation_dtype(precision: str) -> torch.dtype:
    """The dtype activations flow in between the matmuls: bfloat16 with bfloat16 or int8 weights."""
    return torch.float32 if precision == "float32" else torch.bfloat16


class StaticLlamaEngine(StaticEngine):
    """A lean Llama forward (RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied or separate head) over
    the HF weights, with a preallocated KV cache: what SmolLM2 and other Llama-architecture decoders run on.

    The q/k/v and gate/up projections are each fused into one matmul; rotary angles come from the model's own
    ``inv_freq``. Left-padded batches as in :class:`StaticGPT2Engine`. ``precision`` keeps the weights in float32,
    bfloat16 or int8 (see :func:`resolve_precision`); norms and rotary positions are computed in float32 either way.
    """

    # int8 head through the dynamic kernel: worth it only where the head outweighs the layers. SmolLM2's (49k x 576)
    # does not, and its teacher-forced top-1 agreement with float32 fell from 0.96 to 0.90 with it
    DYNAMIC_HEAD = False

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
        self.dtype = activation_dtype(self.precision)
        linear = lambda w: Linear(w.detach(), self.precision)
        self.embed = weight.detach().to(torch.float32 if self.precision == "float32" else torch.bfloat16)
        self.head = Linear(model.lm_head.weight.detach(), self.precision, dynamic=self.DYNAMIC_HEAD)
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
        return F.rms_norm(x.float(), x.shape[-1:], weight, self.eps).to(x.dtype)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    def _run(self, x: torch.Tensor, positions: torch.Tensor, store, masks, wide: bool = False) -> torch.Tensor:
        """x: [B, T, C] embeddings of tokens at ``positions`` [B, T] (see :class:`StaticEngine`)."""
        batch, width = x.shape[:2]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        cos, sin = self._rope(positions, self.inv_freq)
        split = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        for i, (w_in, w_qkv, w_o, w_post, w_gate_up, w_down) in enumerate(self.layers):
            q, k, v = w_qkv(self._norm(x, w_in), wide).split(split, dim=-1)
            q = self._rotate(q.view(batch, width, heads, head_dim).transpose(1, 2), cos, sin)  # [B, H, T, D]
            k = self._rotate(k.view(batch, width, kv_heads, head_dim).transpose(1, 2), cos, sin)  # [B, kvH, T, D]
            keys, values = store(i, k, v.view(batch, width, kv_heads, head_dim).transpose(1, 2))
            a = self._attend(q, keys, values, masks[0])  # [B, H, T, D]
            x = x + w_o(a.transpose(1, 2).reshape(batch, width, heads * head_dim), wide)
            gate, up = w_gate_up(self._norm(x, w_post), wide).chunk(2, dim=-1)
            x = x + w_down(F.silu(gate) * up, wide)
        return self._norm(x, self.final_norm)

    def _cache_shape(self, rows: int, slots: int) -> tuple[int, ...]:
        return (len(self.layers), rows, self.kv_heads, slots, self.head_dim)

    def _cache_dtype(self, device: torch.device) -> torch.dtype:
        # on a CPU the cache stays float32 whatever the weights: attention over it runs ~8x faster than in bfloat16
        # (one decode step at 16 rows x 464 slots x 256 dims: 1.7 ms against 13 per layer, 2 cores here)
        return torch.float32 if device.type == "cpu" else self.dtype

    def _inputs(self, ids: torch.Tensor, positions: torch.Tensor, wide: bool) -> torch.Tensor:
        return self._embed(ids, torch.float32 if wide else self.dtype)

    def _embed(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.embed[ids].to(dtype)  # [B, T, C]

    @staticmethod
    def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                scale: float | None = None) -> torch.Tensor:
        """Grouped-query attention in the cache's dtype; the result in the queries'."""
        return F.scaled_dot_product_attention(q.to(keys.dtype), keys, values, attn_mask=mask, scale=scale,
                                              enable_gqa=True).to(q.dtype)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.to(self.dtype)).float()  # [B, V]; the head is never widened (vocabulary-sized)

    def _rope(self, positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [B, 1, T, D] of the rotary angles at ``positions`` [B, T]."""
        freqs = positions[..., None].float() * inv_freq  # [B, T, D/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, D]
        return angles.cos() * self.rope_scale, angles.sin() * self.rope_scale


def rope_thetas(config) -> dict[str, float] | None:
    """Gemma 3's rotary base per attention kind (``sliding_attention``, ``full_attention``), from either config
    layout (transformers 5.2x: ``rope_parameters`` per layer type; earlier: ``rope_theta`` and
    ``rope_local_base_freq``); None when a kind scales its positions (not the default rotary type)."""
    params = getattr(config, "rope_parameters", None) or {}
    if "sliding_attention" in params:
        if any(p.get("rope_type", "default") != "default" for p in params.values()):
            return None
        return {kind: float(p["rope_theta"]) for kind, p in params.items()}
    if (getattr(config, "rope_scaling", None) or params.get("rope_type", "default") != "default"):
        return None
    return {"full_attention": float(getattr(config, "rope_theta", params.get("rope_theta", 1e6))),
            "sliding_attention": float(getattr(config, "rope_local_base_freq", 10000.0))}


class StaticGemma3Engine(StaticLlamaEngine):
    """Gemma 3 (the embedded ``gemma3``) on the Llama engine's cache and batching: sliding-window layers (each query
    sees the last ``sliding_window`` slots) between global ones, each kind with its own rotary base; RMSNorm as
    ``x * (1 + w)`` before and after both the attention and the feed-forward; query/key norms per head; embeddings
    scaled by sqrt(hidden); GeGLU (tanh GELU) feed-forward; an optional final logit soft-cap. Text-only
    (``Gemma3ForCausalLM``)."""

    # 262,144 x 640: two thirds of a decode step's int8 matmul time at 16 rows; dynamic, a step takes ~40% less and
    # agreement with float32 over 96 greedy tokens goes from 0.948 to 0.927 (weight-only layers either way)
    DYNAMIC_HEAD = True

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        config = getattr(model, "config", None)
        return (
            type(model).__name__ == "Gemma3ForCausalLM"
            and getattr(config, "hidden_activation", None) in ("gelu_pytorch_tanh", "gelu_tanh")
            and getattr(config, "attn_logit_softcapping", None) is None
            and not getattr(config, "attention_bias", False)
            and not getattr(config, "use_bidirectional_attention", False)
            and rope_thetas(config) is not None
        )

    def __init__(self, model: torch.nn.Module, precision: str = "auto") -> None:
        config = model.config
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.eps = config.rms_norm_eps
        self.scale = config.query_pre_attn_scalar**-0.5
        self.window = config.sliding_window
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.max_positions = config.max_position_embeddings
        self.rope_scale = 1.0
        dims = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        self.inv_freqs = {kind: 1.0 / theta**dims for kind, theta in rope_thetas(config).items()}  # [D/2] each
        weight = model.model.embed_tokens.weight
        self.precision = resolve_precision(precision, weight.device)
        self.dtype = activation_dtype(self.precision)
        self.embed_scale = torch.tensor(config.hidden_size**0.5, dtype=weight.dtype).item()  # HF rounds it the same
        linear = lambda w: Linear(w.detach(), self.precision)
        norm = lambda n: 1.0 + n.weight.detach().float()  # Gemma norms scale by (1 + w)
        self.embed = weight.detach().to(torch.float32 if self.precision == "float32" else torch.bfloat16)
        self.head = Linear(model.lm_head.weight.detach(), self.precision, dynamic=self.DYNAMIC_HEAD)
        self.final_norm = norm(model.model.norm)
        kinds = getattr(config, "layer_types", None) or [
            "full_attention" if (i + 1) % config.sliding_window_pattern == 0 else "sliding_attention"
            for i in range(config.num_hidden_layers)]
        self.layers = []
        for kind, layer in zip(kinds, model.model.layers):
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                kind == "sliding_attention",
                norm(layer.input_layernorm),
                linear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),  # [(H + 2 kvH) * D, C]
                norm(a.q_norm), norm(a.k_norm),
                linear(a.o_proj.weight),
                norm(layer.post_attention_layernorm), norm(layer.pre_feedforward_layernorm),
                linear(torch.cat([m.gate_proj.weight, m.up_proj.weight])),  # [2 I, C]
                linear(m.down_proj.weight),
                norm(layer.post_feedforward_layernorm),
            ))

    def _embed(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (self.embed[ids].float() * self.embed_scale).to(dtype)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden.to(self.dtype)).float()
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def _masks(self, mask: torch.Tensor, query_slots: torch.Tensor, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A sliding layer's mask also drops the slots ``window`` or more before the query's (slots and positions
        move together within a row, so the band is the same in either)."""
        band = query_slots[..., None] - torch.arange(end, device=mask.device) < self.window  # [T, S] or [B, T, S]
        return mask, mask & (band[:, None] if band.dim() == 3 else band)

    def _run(self, x: torch.Tensor, positions: torch.Tensor, store, masks, wide: bool = False) -> torch.Tensor:
        """As the Llama engine's, with Gemma's norms, query/key norms, GeGLU and per-kind rotary bases."""
        batch, width = x.shape[:2]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        rope = {kind == "sliding_attention": self._rope(positions, f) for kind, f in self.inv_freqs.items()}
        split = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        for i, (sliding, w_in, w_qkv, w_qn, w_kn, w_o, w_post, w_pre_ff, w_gate_up, w_down, w_post_ff) in \
                enumerate(self.layers):
            q, k, v = w_qkv(self._norm(x, w_in), wide).split(split, dim=-1)
            cos, sin = rope[sliding]
            q = self._rotate(self._norm(q.view(batch, width, heads, head_dim), w_qn).transpose(1, 2), cos, sin)
            k = self._rotate(self._norm(k.view(batch, width, kv_heads, head_dim), w_kn).transpose(1, 2), cos, sin)
            keys, values = store(i, k, v.view(batch, width, kv_heads, head_dim).transpose(1, 2))
            a = self._attend(q, keys, values, masks[sliding], self.scale)
            x = x + self._norm(w_o(a.transpose(1, 2).reshape(batch, width, heads * head_dim), wide), w_post)
            gate, up = w_gate_up(self._norm(x, w_pre_ff), wide).chunk(2, dim=-1)
            x = x + self._norm(w_down(F.gelu(gate, approximate="tanh") * up, wide), w_post_ff)
        return self._norm(x, self.final_norm)


STATIC_ENGINES = (StaticGPT2Engine, StaticGemma3Engine, StaticLlamaEngine)
