"""Text generation with a KV cache: sampling (temperature, top-k, top-p, repetition penalty), stop sequences, seeds,
streaming, batches with left padding.

The engines (:mod:`lmforge.inference.engines`: lmforge's own static-cache decoders for GPT-2, Llama and Gemma 3, and
any other HF causal LM through its own forward) feed the same decoding loop here. Sampling is vectorized over the
batch; only stop-sequence matching and streaming look at text, once per step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmforge.inference.engines import (  # noqa: F401 - the engines' names, importable from here as before
    STATIC_ENGINES,
    HFEngine,
    Linear,
    StaticGemma3Engine,
    StaticGPT2Engine,
    StaticLlamaEngine,
    resolve_precision,
)

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
    logprobs: list | None = None  # continuous batching, when asked: a TokenLogprob per token this delta covers


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


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
        bos = tokenizer.bos_token_id
        self.bos_first = bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None
        self.lock = threading.Lock()

    def _engine(self):
        if self.static is None:
            return HFEngine(self.model)
        if self._prepared is None:
            self._prepared = (self.static(self.model) if self.static is StaticGPT2Engine
                              else self.static(self.model, self.precision))
        return self._prepared

    def encode(self, prompt: str) -> list[int]:
        """A prompt's ids; with the begin-of-text token first when the tokenizer puts one there (Gemma reads
        garbage without it; GPT-2 and SmolLM2 tokenizers add none)."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return [self.bos_first, *ids] if self.bos_first is not None and ids[:1] != [self.bos_first] else ids

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
