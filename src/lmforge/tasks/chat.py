"""Dialogue: supervised fine-tuning of a causal LM on multi-turn conversations.

Conversations are rendered with the model's own chat template (an instruction-tuned model such as ``smollm2`` has one);
a model without one gets a ChatML template. The template is saved with the tokenizer (``chat_template.jinja``), so
``tokenizer.apply_chat_template`` in any tool formats prompts exactly as training did. The loss is on assistant turns
only (their text and the end-of-turn marker that closes them, so the model learns to stop); system and user turns and
the role headers are context. The end-of-turn token is added to the generation config's EOS ids.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import Field

from lmforge.config import DecoderFinetuneConfig
from lmforge.data.chat_format import (
    ChatBatches,
    conversation_batches,
    encode_conversation,
    ensure_chat_tokens,
    stop_on_turn_end,
)
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
    stop_on_turn_end(model, tokenizer)
    train_enc = [encode_conversation(tokenizer, c, config.max_length) for c in train_data.items]
    dev_enc = [encode_conversation(tokenizer, c, config.max_length) for c in dev_data.items]
    pad_id = tokenizer.pad_token_id
    dev_batches = conversation_batches(dev_enc, config.train.batch_size, pad_id)
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
            **score_lm(model, conversation_batches(encoded, 16, tokenizer.pad_token_id))}


TASK = register(Task(
    name="chat", stage="finetune", config=FinetuneChatConfig, train=finetune_chat, evaluate=evaluate_chat,
    summary="Fine-tune a causal LM into a chatbot on multi-turn conversations (loss on assistant turns only).",
    pipeline="text-generation", routes=("openai",), flags=("model", "data", "eval", "max_length", "lora.enabled"),
    metrics=("perplexity", "token_accuracy", "loss", "n"),
))
