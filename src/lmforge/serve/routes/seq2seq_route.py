"""``POST /v1/translate`` and ``POST /v1/summarize``: text in, text out, through the model's seq2seq pipeline.

Each route is a module of its own (``translate.py``, ``summarize.py``, named by the tasks that answer it); both are
made here. Generation runs on the model's own worker thread, off the event loop, with the run's decoding settings
unless the request overrides them.
"""

from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter

from lmforge.serve.deps import ApiKey, Ready, Registry, Settings, find_model, request_texts
from lmforge.serve.schemas import ERRORS, Seq2SeqRequest, Seq2SeqResponse


def seq2seq_router(route: str, summary: str) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=[route], dependencies=[ApiKey, Ready])

    @router.post(f"/{route}", response_model=Seq2SeqResponse, summary=summary, responses=ERRORS)
    async def answer(body: Seq2SeqRequest, registry: Registry, settings: Settings) -> dict:
        texts = request_texts(body.inputs, settings)
        served = find_model(registry, body.model, route)
        decoding = body.model_dump(include=Seq2SeqRequest.DECODING)
        run = functools.partial(served.pipeline.predict, texts, truncate=body.truncate, **decoding)
        results = await asyncio.get_running_loop().run_in_executor(served.executor, run)
        return {"model": served.name, "results": results}

    return router
