"""Grammar-constrained decoding for OpenAI's ``response_format``: ``{"type": "json_object"}`` and
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``.

Asking a model for JSON in the prompt is a request; masking the logits is a guarantee. llguidance compiles the
schema into a grammar over the tokenizer's vocabulary and, per decoding step, gives the set of tokens that keep the
text a prefix of a valid document (an Earley parser plus a lexer walked over a token trie: ~tens of microseconds a
step, where recompiling or re-lexing in Python would cost milliseconds). :func:`grammar_for` compiles a
:class:`Grammar` once per (tokenizer, response_format); each sequence gets its own :class:`Constraint` (a copy of
the compiled matcher: microseconds).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# Whitespace between JSON tokens, bounded: llguidance's default (`[ \n\r\t]+`) lets a weak model emit newlines until
# max_tokens, the classic failure of JSON modes. 20 characters still fit a pretty-printed document nested 9 deep.
_JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,20}"}
# [256, 8]: for each mask byte, the bias of its 8 tokens (bit i set: token allowed: 0, else -inf)
_BYTE_BIAS = np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, 0.0, -np.inf).astype(np.float32)
# HF tokenizer -> {eos ids: llguidance tokenizer}, dropped with the tokenizer
_ll_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class ResponseFormatError(ValueError):
    """A response_format the client got wrong (malformed, or a schema that does not compile): a 400."""


def schema_of(response_format: Mapping[str, Any] | None) -> tuple[dict, bool] | None:
    """The JSON schema a response_format asks for and whether it is strict, or None for plain text. Raises
    ResponseFormatError, naming the field, on a malformed one."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ResponseFormatError("response_format must be an object with a 'type'")
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return None if kind == "text" else ({"type": "object"}, True)
    if kind != "json_schema":
        raise ResponseFormatError(f"response_format.type must be 'text', 'json_object' or 'json_schema': {kind!r}")
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ResponseFormatError("response_format.json_schema must be an object with a 'name' (and a 'schema')")
    schema = spec.get("schema", {})
    if not isinstance(schema, Mapping):
        raise ResponseFormatError("response_format.json_schema.schema must be a JSON Schema object")
    return dict(schema), bool(spec.get("strict", False))


def grammar_for(tokenizer, response_format: Mapping[str, Any] | None,
                eos_ids: Sequence[int] = ()) -> Grammar | None:
    """The compiled grammar for a response_format (None for plain text); compile it once per request. `eos_ids`
    are the tokens that end a sequence (the tokenizer's and the generation config's; default: the tokenizer's):
    they are allowed exactly when the document is complete."""
    parsed = schema_of(response_format)
    if parsed is None:
        return None
    eos = tuple(sorted({int(e) for e in eos_ids} or ({tokenizer.eos_token_id} - {None})))
    with _lock:  # llguidance's tokenizer (a token trie) takes ~1 s to build at 49k tokens: once per tokenizer
        per_eos = _ll_tokenizers.setdefault(tokenizer, {})
        if eos not in per_eos:
            import llguidance.hf

            try:
                per_eos[eos] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos) or None)
            except ValueError as err:  # not the client's fault: no 400
                raise TypeError(f"structured output needs a fast (tokenizers) tokenizer: {err}") from None
    return Grammar(per_eos[eos], *parsed)  # ~1 ms for a typical schema


class Grammar:
    """A JSON schema compiled against one llguidance tokenizer; immutable, so requests and threads share it.

    A strict schema fails on keywords llguidance does not implement (the client asked for a guarantee it cannot
    have); a non-strict one ignores them, as OpenAI's non-strict mode promises no more than best effort."""

    def __init__(self, ll_tokenizer, schema: dict, strict: bool) -> None:
        import llguidance

        self.schema, self.ll_tokenizer, self.vocab_size = schema, ll_tokenizer, ll_tokenizer.vocab_size
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={**_JSON_OPTIONS, "lenient": not strict})
        except ValueError as err:
            raise ResponseFormatError(f"response_format.json_schema.schema is not valid: {err}") from None
        self._matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            error = self._matcher.get_error()
            raise ResponseFormatError(f"response_format.json_schema.schema is not valid: {error}")

    def constraint(self) -> Constraint:
        """A fresh constraint for one sequence (a copy of the compiled matcher: microseconds)."""
        return Constraint(self, self._matcher.deep_copy())


@functools.lru_cache(maxsize=16)
def _bias_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:data:`_BYTE_BIAS` on a device, in the logits' dtype: made once per device and dtype."""
    return torch.from_numpy(_BYTE_BIAS).to(device, dtype)


class Constraint:
    """One sequence's place in the grammar. Per step: :meth:`mask` the row's logits (before temperature, top-k and
    top-p, so those choose among allowed tokens), sample, :meth:`advance` with the token; end the row when
    :attr:`done`. A token the mask forbade (only possible if the caller skipped it) ends the row too, with
    :attr:`error` set, rather than raising inside a batch's decode loop."""

    def __init__(self, grammar: Grammar, matcher) -> None:
        self.grammar, self._matcher = grammar, matcher
        self._words = np.empty((grammar.vocab_size + 31) // 32, dtype=np.int32)  # 1 bit a token
        self.error: str | None = None

    @property
    def accepting(self) -> bool:
        """The text so far is a complete document (EOS is allowed now)."""
        return self._matcher.is_accepting()

    @property
    def done(self) -> bool:
        """Nothing but EOS may follow (the document is closed, EOS was taken, or the matcher failed): end now."""
        return self._matcher.is_stopped()

    def _compute(self) -> np.ndarray:
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return self._words.view(np.uint8)

    def allowed(self) -> torch.Tensor:
        """The tokens allowed next, as a bool [tokenizer vocab] tensor."""
        bits = np.unpackbits(self._compute(), bitorder="little", count=self.grammar.vocab_size)
        return torch.from_numpy(bits.view(np.bool_))

    def mask(self, logits_row: torch.Tensor) -> None:
        """Add -inf, in place, to the logits of disallowed tokens of a [V] row on any device. Ids past the
        tokenizer's vocabulary (models pad V to a multiple of 64 or 128) are never allowed.

        An add of a 0/-inf bias, gathered per mask byte from a [256, 8] table: a masked_fill over a bool mask
        costs ~10x more on the CPU (~200 us at 49k tokens against ~20), and the GPU path moves 1 bit a token."""
        packed, n = self._compute(), min(logits_row.shape[-1], self.grammar.vocab_size)
        if logits_row.device.type == "cpu" and logits_row.dtype == torch.float32 and logits_row.is_contiguous():
            row = logits_row.detach().numpy()[:n]  # numpy: no torch intra-op threads for a 50k-element op
            np.add(row, np.take(_BYTE_BIAS, packed, axis=0).reshape(-1)[:n], out=row)
        else:
            table = _bias_table(logits_row.device, logits_row.dtype)
            index = torch.from_numpy(packed).to(logits_row.device, non_blocking=True).long()
            logits_row[:n].add_(table.index_select(0, index).view(-1)[:n])
        if n < logits_row.shape[-1]:
            logits_row[n:] = float("-inf")

    def advance(self, token_id: int) -> None:
        """Consume the sampled token."""
        if not self._matcher.consume_token(int(token_id)) and self.error is None:
            self.error = self._matcher.get_error().split("\n", 1)[0] or "token not allowed by the grammar"
