"""POST /v1/summarize (see seq2seq_route)."""

from lmforge.serve.routes.seq2seq_route import seq2seq_router

router = seq2seq_router("summarize", "summarize one text or a batch")
