"""Training objectives that wrap an unchanged Hugging Face model: each takes the batch with its labels and returns an
output with the loss (like HF heads do), and the wrapped model is what gets saved.

Causal LM: the loss without materializing the full logits. The LM head of a small model is most of its training cost: for 16 sequences of 256 tokens and a 16k vocabulary the
logits alone are 65M floats, written, normalized, read back and differentiated every step. Here the head and the
cross-entropy run chunk by chunk over the tokens, and each chunk's gradient (softmax minus one-hot) is formed at once
and folded into the hidden-state and weight gradients, so only one chunk of logits ever exists. The numbers equal
``cross_entropy(hidden @ W.T, targets)`` (tested); the model that is trained and saved is the unchanged HF model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# tokens per chunk: small enough for the CPU's caches (measured best at 256-512 on 2 cores), large on a GPU
CHUNK_TOKENS = {"cpu": 512, "cuda": 8192}


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean over valid targets of CE(hidden @ weight.T + bias, targets); targets of -100 are ignored."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        # hidden: [N, H]   weight: [V, H]   targets: [N]
        valid_all = targets != -100
        count = valid_all.sum().clamp(min=1)
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]  # [C, H]
            t = targets[start : start + chunk]
            valid = valid_all[start : start + chunk]
            logits = F.linear(h, weight, bias).float()  # [C, V]
            lse = torch.logsumexp(logits, dim=-1)  # [C]
            picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            # d(mean loss)/d(logits) = (softmax - onehot) / count on valid rows, 0 elsewhere
            grad = torch.exp(logits - lse[:, None])
            grad.scatter_add_(1, t.clamp(min=0)[:, None], -torch.ones_like(picked)[:, None])
            grad *= (valid.float() / count)[:, None]
            grad = grad.to(h.dtype)
            if needs_hidden:
                grad_hidden[start : start + chunk] = grad @ weight
            if needs_weight:
                grad_weight += (grad.T @ h).float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        ctx.save_for_backward(
            grad_hidden if needs_hidden else torch.empty(0),
            grad_weight.to(weight.dtype) if needs_weight else torch.empty(0),
            grad_bias.to(bias.dtype) if grad_bias is not None else torch.empty(0),
        )
        ctx.has_bias = bias is not None
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output
        return (
            grad_hidden * scale if ctx.needs_input_grad[0] else None,
            grad_weight * scale if ctx.needs_input_grad[1] else None,
            grad_bias * scale if ctx.has_bias and ctx.needs_input_grad[2] else None,
            None,
            None,
        )


@dataclass
class CausalLMOutput:
    loss: torch.Tensor


class CausalLMObjective(torch.nn.Module):
    """Wraps an HF causal LM: runs its base model, then the chunked head + loss on next-token targets.

    Takes ``input_ids`` and ``labels`` (HF convention: labels are the inputs, -100 where no loss; shifted here) and
    returns an output with the loss, like the HF head does. The wrapped model is what gets saved.
    """

    def __init__(self, model: torch.nn.Module, chunk: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None):
        base = self.model.base_model
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        head = self.model.get_output_embeddings()
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # position t predicts token t + 1
        targets = labels[:, 1:].reshape(-1)
        keep = targets != -100
        if not bool(keep.all()):  # a prompt, padding: no loss there, so no head either (the head of a 262k
            hidden, targets = hidden[keep], targets[keep]  # vocabulary costs more than the body per token)
        chunk = self.chunk or CHUNK_TOKENS.get(hidden.device.type, 4096)
        loss = ChunkedLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk)
        return CausalLMOutput(loss)


@dataclass
class ClassifierOutput:
    loss: torch.Tensor
    logits: torch.Tensor


class PooledClassifier(torch.nn.Module):
    """Wraps an HF sequence classifier: a text read as several pieces (``owner`` maps each piece to its text) gets its
    pieces' logits pooled into one answer by ``pool(logits, owner, texts)``, and the cross-entropy is taken on that.
    Without ``owner`` every row is a text of its own. The wrapped model is what gets saved."""

    def __init__(self, model: torch.nn.Module, pool: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.pool = model, pool

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                owner: torch.Tensor | None = None) -> ClassifierOutput:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        if owner is not None:
            logits = self.pool(logits, owner, len(labels))
        return ClassifierOutput(F.cross_entropy(logits, labels), logits)


@dataclass
class PretrainingOutput:
    loss: torch.Tensor
    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor
    mlm_logits: torch.Tensor  # [B, P, V]
    nsp_logits: torch.Tensor  # [B, 2]


class MaskedPositionsPretraining(torch.nn.Module):
    """Wraps ``BertForPreTraining`` for MLM + NSP: the MLM head runs only on the gathered masked positions instead of
    on every token."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids, masked_positions, masked_labels, next_sentence_label,
                attention_mask=None) -> PretrainingOutput:
        out = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden = out.last_hidden_state  # [B, T, H]
        picked = hidden.gather(1, masked_positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # [B, P, H]
        mlm_logits = self.model.cls.predictions(picked)  # [B, P, V]
        nsp_logits = self.model.cls.seq_relationship(out.pooler_output)  # [B, 2]
        mlm_loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), masked_labels.flatten(), ignore_index=-100)
        nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
        return PretrainingOutput(mlm_loss + nsp_loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)
