"""The sentence vectors a knowledge base stores and searches by: :class:`lmforge.inference.embedding.SentenceEmbedder`
(mean-pooled, L2-normalized, as sentence-transformers computes them for ``minilm``), the same embedder the server's
``/v1/embeddings`` answers with."""

from lmforge.inference.embedding import SentenceEmbedder

__all__ = ["SentenceEmbedder"]
