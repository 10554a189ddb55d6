"""Continuous (iteration-level) batching over a static-cache engine, for the server.

Each cache row holds one sequence from slot 0 at its own length. Between two decode steps the scheduler admits
waiting sequences into free rows and reads their prompts (several short prompts in one forward pass, a long one in
chunks of ``chunk`` tokens so the running rows keep getting a step between chunks), then decodes every running row in
one forward pass, each at its own position. A row is free again the moment its sequence ends (length, a stop
string, end of text, a finished grammar) or its client goes away, and the next waiting sequence takes it at the next
step: nobody waits for a whole batch to end.

Sampling is per sequence inside the batch (temperature, top-k, top-p, repetition penalty, seed, stop strings, token
limit, grammar); rows that sample alike are shaped together. A seeded sequence draws from its own generator, so it
gives the same text alone or in a batch; a greedy one gives the tokens it would alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.inference.generation import Delta, SamplingParams, TextGenerator, _Row, choose, shape_logits

log = logging.getLogger("lmforge")

FIRST_SLOTS = 512  # the cache's first length per row; it doubles (up to the context) when a sequence needs more


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model (before temperature, penalties or a grammar) and the
    ``top`` likeliest tokens at that step."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Sequence:
    """One sequence to generate: its prompt ids, sampling, and where its deltas go (``emit``, called on the
    scheduler's thread)."""

    ids: list[int]
    params: SamplingParams
    emit: Callable[[Delta], None]
    cancel: threading.Event | None = None
    index: int = 0  # the ``index`` of its deltas (the choice within its request)
    logprobs: int | None = None  # None: off; k: the chosen token's log-probability and the k likeliest
    constraint: Any = None  # a grammar (lmforge.inference.structured) that masks each step's logits
    seed: int | None = None  # its own random stream (default: params.seed)
    arrived: float = field(default_factory=time.perf_counter)
    # the scheduler's state
    row: int = -1
    filled: int = 0  # prompt tokens already in the cache
    length: int = 0  # tokens in the cache
    next_token: int | None = None  # sampled, not yet fed
    limit: int = 0
    state: _Row | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # [V] tokens seen (repetition penalty)
    last_token_at: float | None = None
    records: list[TokenLogprob] = field(default_factory=list)


class Observer:
    """What the scheduler reports (the server turns it into Prometheus metrics); every method may be a no-op."""

    def queue(self, waiting: int, running: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def inter_token(self, seconds: float) -> None: ...
    def tokens(self, prompt: int, generated: int) -> None: ...
    def step(self, rows: int) -> None: ...


class ContinuousScheduler:
    """Decode sequences submitted from any thread on one scheduler thread, ``rows`` at a time (see the module)."""

    def __init__(self, generator: TextGenerator, *, rows: int = 16, chunk: int = 256,
                 observer: Observer | None = None) -> None:
        if generator.static is None:
            raise ValueError(f"continuous batching needs a static-cache engine; {type(generator.model).__name__} has none")
        self.gen, self.rows, self.chunk = generator, rows, max(16, chunk)
        self.observer = observer or Observer()
        self.vocab = generator.model.get_output_embeddings().weight.shape[0]
        self.eos = set(generator.eos_ids)
        self.cache = None
        self.waiting: list[Sequence] = []
        self.active: dict[int, Sequence] = {}  # row -> sequence (prefilling or decoding)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ from any thread
    def submit(self, sequences: list[Sequence]) -> None:
        for seq in sequences:
            if not seq.ids:  # an empty prompt starts from begin-of-text (or the pad token)
                bos = self.gen.tokenizer.bos_token_id
                seq.ids = [bos if bos is not None else self.gen.pad_id]
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scheduler is stopping")
            self.waiting.extend(sequences)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="lmforge-decode", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the scheduler's thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self.active and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    self._end_all("cancelled")
                    return
                self._admit()
                self.observer.queue(len(self.waiting), len(self.active))
            try:
                with self.gen.lock, torch.inference_mode():
                    self._iteration()
            except Exception as exc:  # every sequence on the batch hears it; the scheduler goes on
                log.exception("decoding failed")
                for seq in list(self.active.values()):
                    seq.emit(exc)  # type: ignore[arg-type]  # the consumer raises it
                    self._free(seq)
                self.cache = None
            self.observer.queue(len(self.waiting), len(self.active))  # rows that just ended leave the gauge now

    def _admit(self) -> None:
        """Waiting sequences into free rows, oldest first (under the condition's lock)."""
        for seq in [s for s in self.waiting if s.cancel is not None and s.cancel.is_set()]:
            self.waiting.remove(seq)
            seq.emit(Delta(seq.index, "", "cancelled", len(seq.ids), 0))
        while self.waiting and len(self.active) < self.rows:
            seq = self.waiting.pop(0)
            seq.row = min(set(range(self.rows)) - set(self.active))
            seq.limit = max(1, min(seq.params.max_new_tokens, self.gen.context - len(seq.ids)))
            seq.state = _Row(self.gen.tokenizer, seq.params.stop)
            seed = seq.seed if seq.seed is not None else seq.params.seed
            if seed is not None and not seq.params.greedy:
                seq.generator = torch.Generator(device=self.gen.device).manual_seed(seed)
            if seq.params.repetition_penalty != 1.0:
                seq.seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.gen.device)
                seq.seen[torch.tensor(seq.ids, device=self.gen.device)] = True
            self.active[seq.row] = seq

    def _ensure_cache(self) -> None:
        need = max(len(s.ids) + s.limit for s in self.active.values())
        have = self.cache.slots if self.cache is not None else 0
        if need <= have:
            return
        slots = FIRST_SLOTS
        while slots < need:
            slots *= 2
        engine = self.gen._engine()
        cache = engine.new_cache(self.rows, min(slots, self.gen.context), self.gen.device)
        if self.cache is not None:  # grown while rows are running: they keep what they hold
            cache.k[:, :, :, :have] = self.cache.k
            cache.v[:, :, :, :have] = self.cache.v
        self.cache = cache

    def _iteration(self) -> None:
        for seq in [s for s in self.active.values() if s.cancel is not None and s.cancel.is_set()]:
            self._finish(seq, "cancelled")
        if not self.active:
            return
        self._ensure_cache()
        engine = self.gen._engine()
        prefilling = sorted((s for s in self.active.values() if s.filled < len(s.ids)), key=lambda s: s.arrived)
        if prefilling:
            first = prefilling[0]
            if first.filled or len(first.ids) > self.chunk:  # a long prompt: the next chunk of it, alone
                group, start = [first], first.filled
                chunks = [first.ids[start : start + self.chunk]]
            else:  # fresh short prompts, as many as one chunk holds
                group, chunks, total = [], [], 0
                for seq in prefilling:
                    if seq.filled or (group and total + len(seq.ids) > self.chunk):
                        continue
                    group.append(seq)
                    chunks.append(seq.ids)
                    total += len(seq.ids)
                start = 0
            logits = engine.prefill_rows(self.cache, [s.row for s in group], chunks, start)
            done = []
            for i, (seq, chunk) in enumerate(zip(group, chunks)):
                seq.filled = seq.length = start + len(chunk)
                if seq.filled == len(seq.ids):
                    done.append(i)
            if done:
                self._sample([group[i] for i in done], logits[done])
        decoding = [s for s in self.active.values() if s.next_token is not None]
        if not decoding:
            return
        count = max(s.row for s in decoding) + 1
        tokens = torch.full((count,), self.gen.pad_id, dtype=torch.long)
        lengths = [0] * count
        for row in range(count):
            seq = self.active.get(row)
            if seq is not None:  # a row still reading its prompt writes a slot its next chunk overwrites
                lengths[row] = seq.length
                if seq.next_token is not None:
                    tokens[row] = seq.next_token
        self.observer.step(len(decoding))
        logits = engine.decode_rows(self.cache, tokens.to(self.gen.device), lengths)
        for seq in decoding:
            seq.length += 1
            seq.next_token = None
        self._sample(decoding, logits[[s.row for s in decoding]])

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """The next token of each of ``seqs`` from its logits row, each with its own sampling; then its text."""
        lp = None
        if any(s.logprobs is not None for s in seqs):
            lp = torch.log_softmax(logits.float(), dim=-1)
        for i, seq in enumerate(seqs):
            if seq.constraint is not None:
                seq.constraint.mask(logits[i])
        chosen = [0] * len(seqs)
        groups: dict[tuple, list[int]] = {}
        for i, seq in enumerate(seqs):
            p = seq.params
            groups.setdefault((p.temperature if not p.greedy else 0.0, p.top_k, p.top_p, p.repetition_penalty),
                              []).append(i)
        for members in groups.values():
            params = seqs[members[0]].params
            seen = torch.stack([seqs[i].seen for i in members]) if params.repetition_penalty != 1.0 else None
            shaped = shape_logits(logits[members], params, seen)
            shared = [j for j, i in enumerate(members) if seqs[i].generator is None]
            if shared:
                picks = choose(shaped[shared], params, None).tolist()
                for j, token in zip(shared, picks):
                    chosen[members[j]] = token
            for j, i in enumerate(members):
                if seqs[i].generator is not None:
                    chosen[i] = int(choose(shaped[j : j + 1], params, seqs[i].generator)[0])
        now = time.perf_counter()
        for i, (seq, token) in enumerate(zip(seqs, chosen)):
            if lp is not None and seq.logprobs is not None:
                seq.records.append(self._record(lp[i], token, seq.logprobs))
            if seq.last_token_at is None:
                self.observer.first_token(now - seq.arrived)
            else:
                self.observer.inter_token(now - seq.last_token_at)
            seq.last_token_at = now
            self._advance(seq, token)

    def _record(self, logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
        decode = lambda t: self.gen.tokenizer.decode([t])
        best = []
        if top:
            values, ids = torch.topk(logprobs, top)
            best = [(decode(t), float(v)) for t, v in zip(ids.tolist(), values.tolist())]
        return TokenLogprob(decode(token), float(logprobs[token]), best)

    def _advance(self, seq: Sequence, token: int) -> None:
        row = seq.state
        row.generated += 1
        if seq.seen is not None:
            seq.seen[token] = True
        if token in self.eos and not seq.params.ignore_eos:
            row.finish = "stop"
        else:
            row.add(token)
            seq.next_token = token
            if seq.constraint is not None:
                seq.constraint.advance(token)
                if seq.constraint.done:
                    row.finish = "stop"
        if row.finish is None and row.generated >= seq.limit:
            row.finish = "length"
        if row.finish is None and seq.cancel is not None and seq.cancel.is_set():
            row.finish = "cancelled"
        if row.finish is not None:
            self._finish(seq, row.finish)
            return
        piece = row.pending(final=False)
        if piece:
            records, seq.records = seq.records, []
            seq.emit(Delta(seq.index, piece, logprobs=records or None))

    def _finish(self, seq: Sequence, reason: str) -> None:
        row = seq.state
        row.finish = row.finish or reason
        records, seq.records = seq.records, []
        seq.emit(Delta(seq.index, row.pending(final=True), row.finish, len(seq.ids), row.generated,
                       logprobs=records or None))
        self.observer.tokens(len(seq.ids), row.generated)
        self._free(seq)

    def _free(self, seq: Sequence) -> None:
        seq.next_token = None
        self.active.pop(seq.row, None)

    def _end_all(self, reason: str) -> None:
        for seq in list(self.active.values()):
            self._finish(seq, reason)
        for seq in self.waiting:
            seq.emit(Delta(seq.index, "", reason, len(seq.ids), 0))
        self.waiting.clear()
