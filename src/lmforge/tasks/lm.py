"""What the language-model tasks share: packing token streams into full windows, and scoring a causal LM.

Pretraining (clm), dialogue and code all use these; no task module imports another. Cheap to import: torch is
imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.token_cache import TokenCache
from lmforge.errors import ModelLoadError


def document_stream(cache: TokenCache, doc_ids: np.ndarray, eos_id: int) -> np.ndarray:
    """The chosen documents' tokens, each followed by ``eos_id``, as one array."""
    starts = cache.doc_starts
    pieces = []
    eos = np.asarray([eos_id], dtype=cache.tokens.dtype)
    for d in doc_ids:
        pieces.append(cache.tokens[starts[d] : starts[d + 1]])
        pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=cache.tokens.dtype)


def eos_id(tokenizer, why: str) -> int:
    """The tokenizer's end-of-text id, or an error saying ``why`` it is needed."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelLoadError(
            f"the tokenizer has no end-of-text token; {why}",
            fix="train one with `lmforge tokenizer train --kind bpe`, or use a GPT-style tokenizer",
        )
    return int(eos)


class PackedWindows:
    """Batches of full ``seq_len`` windows over a token stream; (epoch, index) -> the same batch every time.

    Each epoch the stream is cut into windows from a fresh random offset, in a fresh random order. Every window is
    full: no padding is ever computed, and shapes are static (good for ``torch.compile`` and CUDA graphs).
    """

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed
        self.windows = (len(stream) - 1) // seq_len  # an offset of up to seq_len - 1 still fits this many

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs' plans, alive as long as the batch source itself
    def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, 2])
        spare = len(self.stream) - self.windows * self.seq_len
        offset = int(rng.integers(0, max(1, spare)))
        return offset, rng.permutation(self.windows)

    def num_batches(self, epoch: int) -> int:
        return self.windows // self.batch_size

    def batch(self, epoch: int, index: int) -> dict:
        import torch

        offset, order = self._plan(epoch)
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        starts = offset + rows * self.seq_len
        ids = np.stack([self.stream[s : s + self.seq_len] for s in starts]).astype(np.int64)  # [B, T]
        tensor = torch.from_numpy(ids)
        return {"input_ids": tensor, "labels": tensor}


def fixed_windows(stream: np.ndarray, seq_len: int, max_sequences: int, batch_size: int) -> list[dict]:
    """A fixed evaluation set: the first ``max_sequences`` full windows of the stream, batched."""
    import torch

    count = min(max_sequences, len(stream) // seq_len)
    if count == 0:
        return []
    ids = torch.from_numpy(stream[: count * seq_len].astype(np.int64).reshape(count, seq_len))
    return [{"input_ids": ids[i : i + batch_size], "labels": ids[i : i + batch_size]} for i in range(0, count, batch_size)]


def score_lm(model, batches: list[dict], *, shift: bool = True) -> dict[str, float]:
    """Mean label-token loss, perplexity and token accuracy (teacher-forced) over the batches. ``shift``: a causal
    LM's logits at position i predict the label at i + 1 (HF shifts inside the model); an encoder-decoder's at i
    predict the label at i (:func:`score_seq2seq`)."""
    import torch

    device = next(model.parameters()).device
    loss_sum = correct = count = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            labels, logits = (batch["labels"][:, 1:], out.logits[:, :-1]) if shift else (batch["labels"], out.logits)
            valid = labels != -100
            n = int(valid.sum())
            loss_sum += float(out.loss) * n
            correct += int(((logits.argmax(-1) == labels) & valid).sum())
            count += n
    model.train(was_training)
    loss = loss_sum / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(1, count)}


def score_seq2seq(model, batches: list[dict]) -> dict[str, float]:
    """:func:`score_lm` for encoder-decoders (labels are the decoder's outputs, unshifted)."""
    return score_lm(model, batches, shift=False)


# defaults for fine-tuning a pretrained decoder: what LoRA needs, and what full fine-tuning can take without undoing
# an instruction-tuned model's training
LORA_LR, FULL_LR = 2e-4, 5e-5


@dataclass
class Decoder:
    """A causal LM ready to fine-tune: ``model`` is the HF model the loop trains (LoRA layers injected when asked),
    ``save`` writes the run's model folder."""

    model: Any
    tokenizer: Any
    save: Callable[[Any, Path], None]


def load_decoder(config, tokenizer, prepare_tokenizer: Callable[[Any, Any], None] | None = None) -> Decoder:
    """The causal LM ``config.model`` (full fine-tuning, or LoRA adapters with ``config.lora``), and the learning rate
    its default says. A LoRA run saves the merged model (plain transformers loads it) and the adapter in
    ``model/adapter`` (peft loads it onto the base model)."""
    from transformers import AutoModelForCausalLM

    from lmforge.models import from_pretrained
    from lmforge.tasks.common import hf_saver

    model = from_pretrained(AutoModelForCausalLM, config.model, attn_implementation="sdpa")
    if prepare_tokenizer is not None:
        prepare_tokenizer(tokenizer, model)
    lora = config.lora
    if config.train.lr is None:
        config.train.lr = LORA_LR if lora.enabled else FULL_LR
    if not lora.enabled:
        return Decoder(model, tokenizer, hf_saver(tokenizer, unwrap=lambda wrapper: wrapper.model))
    import warnings

    from peft import LoraConfig, get_peft_model

    # peft asks transformers a deprecated question while wrapping; the warning is theirs and says nothing to a user
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    adapted = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=lora.target_modules, task_type="CAUSAL_LM"))

    def save(wrapper, path: Path) -> None:
        import copy

        from lmforge.models import carry_license

        merged = copy.deepcopy(adapted).merge_and_unload()  # a copy: training goes on with the adapters
        merged.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        adapted.save_pretrained(path / "adapter", safe_serialization=True)
        carry_license(merged, path)

    return Decoder(adapted.get_base_model(), tokenizer, save)


def packed_lm_task(name: str, model, tokenizer, stream: np.ndarray, seq_len: int, batch_size: int, seed: int,
                   eval_batches: list[dict], **options):
    """The loop's TaskSpec for a causal LM trained on full windows of a token stream (pretraining, code): the
    chunked objective, held-out scoring when there is held-out text, the HF folder as what is saved."""
    from lmforge.tasks.common import hf_saver
    from lmforge.training.loop import TaskSpec

    options.setdefault("save_model", hf_saver(tokenizer, unwrap=lambda wrapper: wrapper.model))
    return TaskSpec(
        name=name,
        model=lm_objective(model),
        train_data=PackedWindows(stream, seq_len, batch_size, seed),
        evaluate=(lambda wrapper: score_lm(wrapper.model, eval_batches)) if eval_batches else None,
        count_tokens=lambda b: b["input_ids"].numel(),
        eval_size=sum(len(b["input_ids"]) for b in eval_batches),
        **options,
    )


def lm_objective(model):
    """The chunked causal-LM objective around an HF causal LM (what the loop trains; ``.model`` is what is saved)."""
    from lmforge.training.objectives import CausalLMObjective

    return CausalLMObjective(model)
