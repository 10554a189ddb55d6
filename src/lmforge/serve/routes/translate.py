"""POST /v1/translate (see seq2seq_route)."""

from lmforge.serve.routes.seq2seq_route import seq2seq_router

router = seq2seq_router("translate", "translate one text or a batch")
