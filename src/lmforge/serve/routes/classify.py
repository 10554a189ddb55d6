from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter, HTTPException

from lmforge.serve.deps import ApiKey, Ready, Registry, Settings, find_model, request_texts
from lmforge.serve.schemas import ERRORS, ClassifyRequest, ClassifyResponse

ROUTE = "classify"  # what a task lists in its ``routes`` to be served here (lmforge.tasks.registry)
router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[ApiKey, Ready])


@router.post("/classify", response_model=ClassifyResponse, summary="classify one text or a batch",
             responses=ERRORS)
async def classify(body: ClassifyRequest, registry: Registry, settings: Settings) -> dict:
    texts = request_texts(body.inputs, settings)
    served = find_model(registry, body.model, ROUTE)
    # What a request costs is the windows its texts are read as (one each unless the model reads long texts in
    # windows); InputTooLong -> 422 naming the inputs. Tokenizing 64 long inputs takes ~0.25 s of CPU, so it runs off
    # the event loop; on the model's own worker rather than the shared thread pool, because inference switches the
    # same tokenizer's truncation on and off: from two threads at once, inputs came back cut when they should not be
    cost = functools.partial(served.pipeline.cost, texts, truncate=body.truncate)
    windows = sum(await asyncio.get_running_loop().run_in_executor(served.executor, cost))
    if windows > settings.max_batch_inputs:
        raise HTTPException(422, f"these {len(texts)} inputs are read as {windows} windows; one request may hold "
                                 f"{settings.max_batch_inputs}: split them over several requests")
    results = await served.batcher.submit(texts, cost=windows)
    return {"model": served.name, "results": results}
