"""Conversations rendered with a model's own chat template, labelled on the assistant's replies only, and batched:
what dialogue fine-tuning and code fine-tuning of a chat model share. A model without a template gets ChatML.
Cheap to import (torch is imported inside the functions)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lmforge.data.batching import capped, length_grouped_batches
from lmforge.errors import DataError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def ensure_chat_tokens(tokenizer, model=None) -> None:
    """A model with its own chat template (an instruction-tuned one, e.g. smollm2) keeps it; any other gets the ChatML
    markers and template (growing the model's embeddings if tokens were added)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None):
        return
    vocab = tokenizer.get_vocab()
    missing = [t for t in (IM_START, IM_END) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = CHAT_TEMPLATE


def stop_on_turn_end(model, tokenizer) -> None:
    """Generation stops at the end of the assistant's turn (ChatML's end-of-turn marker) as well as at EOS; the
    tokenizer pads with its pad token."""
    ends = [tokenizer.get_vocab()[IM_END]] if IM_END in tokenizer.get_vocab() else []
    model.generation_config.eos_token_id = sorted({*ends, *([tokenizer.eos_token_id] if tokenizer.eos_token_id
                                                               is not None else [])})
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def _render(tokenizer, messages: list[dict], **options) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except Exception as exc:  # noqa: BLE001 - a template raises what its author wrote (jinja2 TemplateError, ...)
        raise DataError(f"the model's chat template refuses this conversation: {exc}",
                        fix="check the roles and their order (some templates allow no system message, or need "
                            "user and assistant to alternate)") from None


def encode_conversation(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the conversation rendered with the tokenizer's own chat template, and labels that are -100
    everywhere but on each assistant reply and the end-of-turn marker that closes it (so the model learns to stop).

    The replies are found in the rendered text: a reply is what rendering up to it adds after the assistant's header
    (rendering the messages before it with ``add_generation_prompt``), whatever the template; tokens are then labelled
    by their character offsets, so the text is tokenized once, as at inference."""
    text = _render(tokenizer, messages)
    regions = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise DataError("the model's chat template renders a conversation differently from its beginning",
                            fix="use a model whose template renders each turn after the previous ones")
        reply = through[len(before):]
        regions.append((len(before), len(before) + len(reply.rstrip())))  # the turn's trailing newline is context
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = encoded["input_ids"], []
    for token, (start, end) in zip(ids, encoded["offset_mapping"]):
        inside = any(begin <= start and end <= stop for begin, stop in regions) and end > start
        labels.append(token if inside else -100)
    return ids[:max_length], labels[:max_length]


class ChatBatches:
    def __init__(self, encoded: list[tuple[list[int], list[int]]], batch_size: int, seed: int, pad_id: int,
                 max_tokens: int | None = None) -> None:
        self.encoded, self.batch_size, self.seed, self.pad_id = encoded, batch_size, seed, pad_id
        self.max_tokens = max_tokens
        self.lengths = np.asarray([len(ids) for ids, _ in encoded])

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders, alive as long as the batch source itself
    def _order(self, epoch: int) -> list[np.ndarray]:
        batches = length_grouped_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch, 3]))
        return capped(batches, self.lengths, self.max_tokens)

    def num_batches(self, epoch: int) -> int:
        return len(self._order(epoch))

    def batch(self, epoch: int, index: int) -> dict:
        return collate([self.encoded[i] for i in self._order(epoch)[index]], self.pad_id)


def collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    import torch

    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def conversation_batches(encoded: list, batch_size: int, pad_id: int, max_tokens: int | None = None) -> list[dict]:
    """Fixed evaluation batches, in order (split as :func:`capped` says)."""
    order = np.arange(len(encoded))
    batches = capped([order[i : i + batch_size] for i in range(0, len(encoded), batch_size)],
                     np.asarray([len(ids) for ids, _ in encoded]), max_tokens)
    return [collate([encoded[i] for i in batch], pad_id) for batch in batches]


def as_exchange(instruction: str, source: str, target: str | None = None) -> list[dict]:
    """A pair as the chat exchange a causal LM learns or is asked: the instruction and the source from the user, the
    target as the assistant's answer."""
    messages = [{"role": "user", "content": f"{instruction}\n\n{source}"}]
    return messages + ([{"role": "assistant", "content": target}] if target is not None else [])


def source_cutter(tokenizer, max_tokens: int):
    """Cuts a source text to its first ``max_tokens`` tokens (a causal LM's prompt is text: the cut is made before
    it is rendered into the exchange, so the answer is never what gets cut)."""

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])

    return cut
