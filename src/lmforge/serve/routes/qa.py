"""``POST /v1/qa``: extractive question answering, one question with its context or a batch of them.

A long context is read in overlapping windows (each counts against the server's ``max_batch_inputs``, as a
classifier's windows do); inference runs on the model's own worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter

from lmforge.serve.deps import ApiKey, Ready, Registry, Settings, check_batch, check_text, find_model
from lmforge.serve.schemas import ERRORS, QAPair, QARequest, QAResponse

ROUTE = "qa"  # what a task lists in its ``routes`` to be served here (lmforge.tasks.registry)
router = APIRouter(prefix="/v1", tags=["qa"], dependencies=[ApiKey, Ready])


def check_pairs(pairs: list[QAPair], settings) -> None:
    """The server's limits on a request's questions and contexts (422 naming the input that breaks one)."""
    check_batch(len(pairs), settings, "send a question and its context, or a list of them")
    for i, pair in enumerate(pairs):
        for name in ("question", "context"):
            check_text(getattr(pair, name), f"input {i}: the {name}", settings)


@router.post("/qa", response_model=QAResponse, summary="answer questions from their contexts (extractive)",
             responses=ERRORS)
async def answer(body: QARequest, registry: Registry, settings: Settings) -> dict:
    pairs = body.pairs()
    check_pairs(pairs, settings)
    served = find_model(registry, body.model, ROUTE)
    # a question too long for a window (without truncate) or more windows than a request may hold: InputTooLong,
    # a 422 naming them
    run = functools.partial(served.pipeline.predict, [(p.question, p.context) for p in pairs],
                            truncate=body.truncate, max_windows=settings.max_batch_inputs)
    results = await asyncio.get_running_loop().run_in_executor(served.executor, run)
    return {"model": served.name, "results": results}
