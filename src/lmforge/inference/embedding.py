"""Sentence vectors: a BERT encoder's last hidden states mean-pooled over the real tokens and L2-normalized, as
sentence-transformers computes them for ``minilm`` (all-MiniLM-L6-v2 is a sentence-embedding model). BERT folders
run on the lean forward of :mod:`lmforge.inference.encoder`; any other encoder through transformers. The knowledge
bases embed their passages with it (:mod:`lmforge.kb`), the server its ``/v1/embeddings`` inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmforge.data.batching import pad_batch, sorted_batches


class SentenceEmbedder:
    """``embed(texts) -> float32 [N, dim]``, unit length. Texts are cut to ``max_length`` tokens (default: the
    model's sentence-transformers setting, else 256). ``precision="int8"`` runs a BERT's layers in int8 on the CPU
    where PyTorch can (:class:`lmforge.inference.encoder.LeanBert`); :attr:`precision` says what runs."""

    def __init__(self, model: str | Path = "minilm", *, max_length: int | None = None, device: str | None = None,
                 precision: str = "float32"):
        from lmforge.inference import encoder
        from lmforge.models import resolve_model_path

        self.model = str(model)
        self.path = Path(resolve_model_path(model))
        self.device = torch.device(device or "cpu")
        settings = self.path / "sentence_bert_config.json"
        configured = json.loads(settings.read_text(encoding="utf-8")).get("max_seq_length") if settings.exists() else None
        if encoder.supports(self.path, classifier=False):
            net = encoder.LeanBert(self.path, self.device, int8=precision == "int8")
            tok = encoder.FastTokenizer(self.path)
            self.precision = net.precision
            self._hidden, self._encode, self.pad_id = net.hidden_states, tok.encode, tok.pad_token_id or 0
            self.dim, limit = int(net.config["hidden_size"]), int(net.config["max_position_embeddings"])
        else:
            from transformers import AutoModel

            from lmforge.models import from_pretrained, load_tokenizer

            tokenizer = load_tokenizer(self.path)
            net = from_pretrained(AutoModel, self.path).to(self.device).eval()
            self._hidden = lambda ids, mask: net(input_ids=ids, attention_mask=mask).last_hidden_state
            self._encode = lambda texts, n: tokenizer(texts, truncation=n is not None, max_length=n,
                                                      verbose=False)["input_ids"]
            self.pad_id = tokenizer.pad_token_id or 0
            self.precision = "float32"
            self.dim, limit = int(net.config.hidden_size), int(getattr(net.config, "max_position_embeddings", 512))
        self.max_length = min(int(max_length or configured or 256), limit)

    def tokenize(self, texts: list[str], *, truncate: bool = True) -> list[list[int]]:
        """Token ids of each text with the special tokens, as :meth:`embed` reads them: cut to ``max_length``, or
        whole (``truncate=False``, to count them). Not thread-safe (a BERT tokenizer's truncation is switched on and
        off): call it from one thread, as the server does from the model's worker."""
        return self._encode(list(texts), self.max_length if truncate else None)

    def embed(self, texts: list[str], *, batch_size: int = 32, workers: int | None = None) -> np.ndarray:
        """Unit vectors for ``texts``, batched by length. On a CPU with several cores, ``workers`` batches (default:
        one per core) run side by side, each on one thread: BERT's matrix products at this size scale poorly across
        threads of one product, and a batch per core keeps every core busy."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tokens(self.tokenize(texts), batch_size=batch_size, workers=workers)

    def embed_tokens(self, encoded: list[list[int]], *, batch_size: int = 32, workers: int | None = None) -> np.ndarray:
        """Unit vectors for texts already tokenized by :meth:`tokenize` (at most ``max_length`` ids each)."""
        out = np.zeros((len(encoded), self.dim), dtype=np.float32)
        if not encoded:
            return out
        batches = sorted_batches([len(x) for x in encoded], batch_size)

        @torch.inference_mode()  # per thread: inference mode is thread-local
        def run(index: np.ndarray) -> None:
            ids, mask = pad_batch([encoded[i] for i in index], self.pad_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self._hidden(ids, mask).float()  # [B, T, H]
            weights = mask.unsqueeze(-1).float()  # [B, T, 1]: padding is left out of the mean
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, H]
            out[index] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

        workers = workers or (torch.get_num_threads() if self.device.type == "cpu" else 1)
        if workers <= 1 or len(batches) <= 1:
            for index in batches:
                run(index)
            return out
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmforge-embed") as pool:
                list(pool.map(run, batches))
        finally:
            torch.set_num_threads(threads)
        return out
