"""Dialogue: supervised fine-tuning of a causal LM on multi-turn conversations.

Conversations are rendered with the model's own chat template (an instruction-tuned model such as ``smollm2`` has one);
a model without one gets a ChatML template. The template is saved with the tokenizer (``chat_template.jinja``), so
``tokenizer.apply_chat_template`` in any tool formats prompts exactly as training did. The loss is on assistant turns
only (their text and the end-of-turn marker that closes them, so the model learns to stop); system and user turns and
the role headers are context. The end-of-turn token is added to the generation config's EOS ids.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from pydantic import Field

from lmforge.config import DecoderFinetuneConfig
from lmforge.data.batching import length_grouped_batches
from lmforge.data.conversations import Conversations, load_conversations
from lmforge.errors import DataError
from lmforge.rundir import RunDir
from lmforge.tasks.common import bundled_dev_split, data_info, load_run_model, run_config, training_stage
from lmforge.tasks.lm import lm_objective, load_decoder, score_lm
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")


class FinetuneChatConfig(DecoderFinetuneConfig):
    data: str = Field("dialogue", description="conversations: {\"messages\": [{role, content}, ...]} per row")
    eval: str | None = Field(None, description="dev conversations (default: the bundled dev split, else a held-out "
                             "share of the training data)")
    dev_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of conversations held out when no dev data")
    max_length: int = Field(512, ge=16, description="truncate conversations to this many tokens")

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
    def __init__(self, encoded: list[tuple[list[int], list[int]]], batch_size: int, seed: int, pad_id: int) -> None:
        self.encoded, self.batch_size, self.seed, self.pad_id = encoded, batch_size, seed, pad_id
        self.lengths = np.asarray([len(ids) for ids, _ in encoded])

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' orders, alive as long as the batch source itself
    def _order(self, epoch: int) -> list[np.ndarray]:
        return length_grouped_batches(self.lengths, self.batch_size, np.random.default_rng([self.seed, epoch, 3]))

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.encoded) // self.batch_size)

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


def split_conversations(data: Conversations, fraction: float, seed: int) -> tuple[Conversations, Conversations]:
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, round(fraction * len(data)))
    pick = lambda idx: ([data.items[i] for i in sorted(idx)], [data.wheres[i] for i in sorted(idx)])
    dev_items, dev_wheres = pick(order[:cut])
    train_items, train_wheres = pick(order[cut:])
    return (Conversations(data.spec, train_items, train_wheres, data.files),
            Conversations(f"{data.spec} (held-out {fraction:.0%})", dev_items, dev_wheres, data.files))


def _split(config: FinetuneChatConfig) -> tuple[Conversations, Conversations]:
    data = load_conversations(config.data)
    dev = bundled_dev_split(config.data, config.eval)
    if dev:
        return data, load_conversations(dev)
    if len(data) < 2:
        raise DataError(f"{config.data} has {len(data)} conversation(s); need at least 2 to hold one out",
                        fix="add conversations, or give dev data with --eval")
    return split_conversations(data, config.dev_fraction, config.train.seed)


def _batches(encoded: list, batch_size: int, pad_id: int) -> list[dict]:
    return [collate(encoded[i : i + batch_size], pad_id) for i in range(0, len(encoded), batch_size)]


def prepare_chat(config: FinetuneChatConfig):
    from lmforge.models import load_tokenizer, resolve_model_path
    from lmforge.training.loop import TaskSpec, seed_everything

    resolve_model_path(config.model)
    train_data, dev_data = _split(config)
    tokenizer = load_tokenizer(config.model)
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    seed_everything(config.train.seed)
    decoder = load_decoder(config, tokenizer, prepare_tokenizer=ensure_chat_tokens)
    model = decoder.model
    ends = [tokenizer.get_vocab()[IM_END]] if IM_END in tokenizer.get_vocab() else []  # ChatML's end of turn
    eos_ids = sorted({*ends, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    train_enc = [encode_conversation(tokenizer, c, config.max_length) for c in train_data.items]
    dev_enc = [encode_conversation(tokenizer, c, config.max_length) for c in dev_data.items]
    pad_id = tokenizer.pad_token_id
    dev_batches = _batches(dev_enc, config.train.batch_size, pad_id)
    run.write_info(
        stage="finetune", task="chat", config=config,
        extra={"data": {"train": data_info(train_data.spec, train_data.files, conversations=len(train_data)),
                        "dev": data_info(dev_data.spec, dev_data.files, conversations=len(dev_data))},
               "chat_template": "ChatML (<|im_start|>role ... <|im_end|>)"},
    )
    spec = TaskSpec(
        name="finetune chat",
        model=lm_objective(model),
        train_data=ChatBatches(train_enc, config.train.batch_size, config.train.seed, pad_id),
        save_model=decoder.save,
        evaluate=lambda wrapper: score_lm(wrapper.model, dev_batches),
        best_metric="loss",
        greater_is_better=False,
        count_tokens=lambda b: int(b["attention_mask"].sum()),
        eval_size=len(dev_enc),
    )
    return spec, run, {}


finetune_chat = training_stage(prepare_chat, "Fine-tune a causal LM on conversations; returns the run summary.")


def evaluate_chat(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """Loss and perplexity on the assistant turns of ``options.data`` (default: the run's held-out conversations)."""
    from transformers import AutoModelForCausalLM

    if options.data:
        conversations = load_conversations(options.data)
    elif info.get("config"):
        conversations = _split(run_config(FinetuneChatConfig, info))[1]
    else:
        raise DataError("a model that is not a chat run has no held-out conversations of its own", where="--data",
                        fix="give conversations, e.g. --data dialogue")
    max_length = (info.get("config") or {}).get("max_length", FinetuneChatConfig.model_fields["max_length"].default)
    tokenizer, model = load_run_model(run, AutoModelForCausalLM)
    ensure_chat_tokens(tokenizer)
    encoded = [encode_conversation(tokenizer, c, max_length) for c in conversations.items]
    return {"data": conversations.spec, "n": len(encoded),
            **score_lm(model, _batches(encoded, 16, tokenizer.pad_token_id))}


TASK = register(Task(
    name="chat", stage="finetune", config=FinetuneChatConfig, train=finetune_chat, evaluate=evaluate_chat,
    summary="Fine-tune a causal LM into a chatbot on multi-turn conversations (loss on assistant turns only).",
    pipeline="text-generation", routes=("openai",), flags=("model", "data", "eval", "max_length", "lora.enabled"),
    metrics=("perplexity", "token_accuracy", "loss", "n"),
))
