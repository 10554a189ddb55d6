"""``POST /v1/translate`` and ``POST /v1/summarize``: text in, text out, through the model's seq2seq pipeline.

Each route is a module of its own (``translate.py``, ``summarize.py``, named by the tasks that answer it); both are
made here. Generation runs on the model's own worker thread, off the event loop, with the run's decoding settings
unless the request overrides them. A causal LM served for generation (smollm2, gemma3, a CLM run) answers too, on the
weights it already holds: a base model few-shot (``shots`` examples of the task's training pairs, nearest first), one
with a chat template asked the task's instruction.
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
        loop = asyncio.get_running_loop()
        pipeline = await loop.run_in_executor(served.executor, text2text, served, route)
        run = functools.partial(pipeline.predict, texts, truncate=body.truncate, shots=body.shots, **decoding)
        results = await loop.run_in_executor(served.executor, run)  # an LmforgeError (too many shots) is a 422
        return {"model": served.name, "results": results}

    return router


def text2text(served, route: str):
    """The model's text-to-text pipeline: its own (a translate or summarize run), or for a causal LM one over the
    weights it holds, made once per route (the examples of a few-shot prompt are read on the first request)."""
    from lmforge.inference.pipelines import Seq2SeqPipeline

    if isinstance(served.pipeline, Seq2SeqPipeline):
        return served.pipeline
    key = f"text2text:{route}"
    if key not in served.extra:
        from lmforge.tasks import registry
        from lmforge.tasks.seq2seq import few_shot, task_settings

        task = registry.get(route)
        settings = task_settings(task.config, served.pipeline.info, route)
        served.extra[key] = Seq2SeqPipeline.over(served.pipeline, instruction=settings.instruction,
                                                 few_shot=few_shot(settings, task.default_data))
    return served.extra[key]
