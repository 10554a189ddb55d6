"""Dialogue: supervised fine-tuning of a causal LM on multi-turn conversations.

Conversations are rendered with a ChatML template that is saved with the tokenizer (``chat_template.jinja``), so
``tokenizer.apply_chat_template`` in any tool formats prompts exactly as training did. The loss is on assistant turns
only (their text and the ``<|im_end|>`` that ends them, so the model learns to stop); system and user turns and the
role headers are context. The end-of-turn token is added to the generation config's EOS ids.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

from lmforge.config import FinetuneChatConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.data.conversations import Conversations, load_conversations
from lmforge.errors import DataError
from lmforge.rundir import RunDir, file_fingerprint
from lmforge.tasks.common import hf_saver, run_stage
from lmforge.tasks.lm_loss import CausalLMObjective
from lmforge.training.loop import TaskSpec, seed_everything

log = logging.getLogger("lmforge")

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def ensure_chat_tokens(tokenizer, model=None) -> None:
    """Give the tokenizer the ChatML markers and template (growing the model's embeddings if tokens were added)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (IM_START, IM_END) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = CHAT_TEMPLATE


def encode_conversation(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that are -100 everywhere but assistant replies."""
    ids: list[int] = []
    labels: list[int] = []
    for message in messages:
        head = tokenizer.encode(f"{IM_START}{message['role']}\n", add_special_tokens=False)
        body = tokenizer.encode(f"{message['content']}{IM_END}", add_special_tokens=False)
        tail = tokenizer.encode("\n", add_special_tokens=False)
        ids += head + body + tail
        labels += [-100] * len(head) + (body if message["role"] == "assistant" else [-100] * len(body))
        labels += [-100] * len(tail)
    return ids[:max_length], labels[:max_length]


class ChatBatches:
    def __init__(self, encoded: list[tuple[list[int], list[int]]], batch_size: int, seed: int, pad_id: int) -> None:
        self.encoded, self.batch_size, self.seed, self.pad_id = encoded, batch_size, seed, pad_id
        self.lengths = np.asarray([len(ids) for ids, _ in encoded])

    @lru_cache(maxsize=2)
    def _order(self, epoch: int) -> list[np.ndarray]:
        return length_grouped_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch, 3]))

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.encoded) // self.batch_size)

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        return collate([self.encoded[i] for i in self._order(epoch)[index]], self.pad_id)


def collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def split_conversations(data: Conversations, fraction: float, seed: int) -> tuple[Conversations, Conversations]:
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(round(fraction * len(data))))
    pick = lambda idx: ([data.items[i] for i in sorted(idx)], [data.wheres[i] for i in sorted(idx)])  # noqa: E731
    dev_items, dev_wheres = pick(order[:cut])
    train_items, train_wheres = pick(order[cut:])
    return (Conversations(data.spec, train_items, train_wheres, data.files),
            Conversations(f"{data.spec} (held-out {fraction:.0%})", dev_items, dev_wheres, data.files))


@torch.no_grad()
def score_batches(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    from lmforge.tasks.pretrain_clm import score_lm

    return score_lm(model, batches)


def prepare_chat(config: FinetuneChatConfig) -> tuple[TaskSpec, RunDir]:
    from transformers import AutoModelForCausalLM

    from lmforge.models import from_pretrained, load_tokenizer, resolve_model_path

    resolve_model_path(config.model)
    data = load_conversations(config.data)
    if config.eval:
        train_data, dev_data = data, load_conversations(config.eval)
    else:
        if len(data) < 2:
            raise DataError(f"{config.data} has {len(data)} conversation(s); need at least 2 to hold one out",
                            fix="add conversations, or give dev data with --eval")
        train_data, dev_data = split_conversations(data, config.dev_fraction, config.train.seed)
    tokenizer = load_tokenizer(config.model)
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    seed_everything(config.train.seed)
    model = from_pretrained(AutoModelForCausalLM, config.model, attn_implementation="sdpa")
    ensure_chat_tokens(tokenizer, model)
    end_of_turn = tokenizer.convert_tokens_to_ids(IM_END)
    eos_ids = sorted({end_of_turn, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    train_enc = [encode_conversation(tokenizer, c, config.max_length) for c in train_data.items]
    dev_enc = [encode_conversation(tokenizer, c, config.max_length) for c in dev_data.items]
    pad_id = tokenizer.pad_token_id
    dev_batches = [collate(dev_enc[i : i + config.train.batch_size], pad_id)
                   for i in range(0, len(dev_enc), config.train.batch_size)]
    run.write_info(
        stage="finetune", task="chat", config=config,
        extra={"data": {"train": {"spec": train_data.spec, "conversations": len(train_data),
                                  "files": [file_fingerprint(f) for f in train_data.files]},
                        "dev": {"spec": dev_data.spec, "conversations": len(dev_data)}},
               "chat_template": "ChatML (<|im_start|>role ... <|im_end|>)"},
    )

    task = TaskSpec(
        name="finetune chat",
        model=CausalLMObjective(model),
        train_data=ChatBatches(train_enc, config.train.batch_size, config.train.seed, pad_id),
        save_model=hf_saver(tokenizer, unwrap=lambda wrapper: wrapper.model),
        evaluate=lambda wrapper: score_batches(wrapper.model, dev_batches),
        best_metric="loss",
        greater_is_better=False,
        count_tokens=lambda b: int(b["attention_mask"].sum()),
    )
    return task, run


def finetune_chat(config: FinetuneChatConfig, *, show_progress: bool = True) -> dict:
    return run_stage(prepare_chat(config), config, show_progress)


def evaluate_chat_run(run: RunDir, info: dict, data: str | None) -> dict:
    """Loss and perplexity on the assistant turns of ``data`` (default: the run's held-out conversations)."""
    from transformers import AutoModelForCausalLM

    from lmforge.models import from_pretrained, load_tokenizer

    config = FinetuneChatConfig.model_validate(info["config"])
    if data:
        conversations = load_conversations(data)
    elif config.eval:
        conversations = load_conversations(config.eval)
    else:
        conversations = split_conversations(load_conversations(config.data), config.dev_fraction, config.train.seed)[1]
    tokenizer = load_tokenizer(run.model_dir)
    model = from_pretrained(AutoModelForCausalLM, run.model_dir, attn_implementation="sdpa").eval()
    encoded = [encode_conversation(tokenizer, c, config.max_length) for c in conversations.items]
    batches = [collate(encoded[i : i + 16], tokenizer.pad_token_id) for i in range(0, len(encoded), 16)]
    return {"data": conversations.spec, "n": len(encoded), **score_batches(model, batches)}
