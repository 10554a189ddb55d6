"""``POST /v1/kb/search`` and ``POST /v1/kb/ask``: the knowledge base ``lmforge serve --kb KB`` was given.

Search answers with the best passages (BM25, dense or hybrid). Ask retrieves, then a served reader answers from the
passages with citations: a model with a chat template (writes the answer; with ``"stream": true`` it arrives as
server-sent events like chat completions) or an extractive QA run (a span). The KB is searched on its own worker
thread (one SQLite connection, one encoder); readers generate on their model's worker.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lmforge.serve.deps import ApiKey, Ready, Registry, Settings
from lmforge.serve.errors import report_internal_error
from lmforge.serve.schemas import ERRORS, Strict

router = APIRouter(prefix="/v1/kb", tags=["kb"], dependencies=[ApiKey, Ready])
_KB_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-kb")


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=2000, description="what to look for")
    k: int = Field(5, ge=1, le=50, description="passages to return")
    mode: Literal["bm25", "dense", "hybrid"] = Field("hybrid", description="words (BM25), meaning (sentence "
                                                     "vectors) or both (reciprocal-rank fusion)")


class Passage(BaseModel):
    id: str
    title: str
    text: str
    score: float
    similarity: float = Field(description="cosine similarity of the passage to the query")
    rank: int


class SearchResponse(BaseModel):
    hits: list[Passage]


class AskRequest(Strict):
    question: str = Field(min_length=1, max_length=2000, description="the question")
    reader: str | None = Field(None, description="the served model that answers (default: the first chat model, "
                               "else the first QA model)")
    k: int = Field(4, ge=1, le=10, description="passages given to the reader")
    mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
    min_similarity: float = Field(0.3, ge=-1, le=1, description="below this the answer is 'not found in the "
                                  "knowledge base' and no reader is asked")
    max_new_tokens: int = Field(256, ge=1, le=1024, description="longest answer in tokens (generative readers)")
    stream: bool = Field(False, description="send server-sent events: passages, then pieces of the answer, then "
                         "the answer with its citations, then [DONE]")


class Citation(BaseModel):
    n: int = Field(description="the passage's number in the prompt ([n] in the answer)")
    id: str
    title: str
    matched: bool = Field(False, description="added by lmforge, not the reader: the sentence before it cited nothing "
                          "and at least half of its content words are in this passage")


class NumberedPassage(Passage):
    n: int


class AskResponse(BaseModel):
    answer: str
    found: bool = Field(description="false when the knowledge base holds nothing close enough to the question")
    citations: list[Citation]
    passages: list[NumberedPassage]
    repeat_stopped: bool = Field(False, description="the reader began to repeat a sentence; the answer ends before it")


def _kb(registry):
    if registry.kb is None:  # the router is mounted only with --kb: unreachable unless loading failed
        raise HTTPException(503, "the knowledge base is not loaded")
    return registry.kb


def _reader(registry, name: str | None):
    from lmforge.kb.ask import reader_kind

    def usable(served) -> bool:
        try:
            reader_kind(served.pipeline)
            return True
        except Exception:  # noqa: BLE001 - a model that cannot read passages
            return False

    if name is not None:
        served = registry.models.get(name)
        if served is None:
            raise HTTPException(404, f"model '{name}' not found; loaded: {', '.join(registry.models) or 'none'}")
        if not usable(served):
            raise HTTPException(422, f"model '{name}' is a {served.task} model: it cannot answer from passages "
                                     "(serve a chat model such as smollm2, or an extractive QA run)")
        return served
    ranked = sorted((s for s in registry.models.values() if usable(s)),
                    key=lambda s: 0 if getattr(s.pipeline, "kind", "") == "text-generation" else 1)
    if not ranked:
        raise HTTPException(422, "no served model can answer from the knowledge base: serve smollm2 (or a chat run) "
                                 "or an extractive QA run beside --kb")
    return ranked[0]


class KbInfo(BaseModel):
    passages: int
    model: str = Field(description="the sentence encoder its vectors come from")
    max_length: int = Field(description="tokens of each passage embedded")
    precision: str = Field(description="how its vectors (and the questions') are computed: int8 or float32")
    size_mb: float


@router.get("", response_model=KbInfo, summary="The knowledge base this server answers from")
async def info(registry: Registry) -> dict:
    from lmforge.kb import kb_precision

    kb = _kb(registry)
    return {"passages": kb.store.count, "model": kb.meta["model"], "max_length": kb.meta["max_length"],
            "precision": kb_precision(kb.meta), "size_mb": round(kb.size_bytes() / 1e6, 1)}


@router.post("/search", response_model=SearchResponse, summary="Search the knowledge base", responses=ERRORS)
async def search(body: SearchRequest, registry: Registry) -> dict:
    kb = _kb(registry)
    if not body.query.strip():
        raise HTTPException(422, "query is blank")
    hits = await asyncio.get_running_loop().run_in_executor(_KB_WORKER, kb.search, body.query, body.k, body.mode)
    return {"hits": [h.as_dict() for h in hits]}


async def _events(make: Callable[[threading.Event], Iterator[dict]], executor, cancel: threading.Event,
                  ) -> AsyncIterator[dict]:
    """Run a blocking event iterator on ``executor``, handing its events to the event loop as they come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    def produce() -> None:
        try:
            for event in make(cancel):
                loop.call_soon_threadsafe(queue.put_nowait, event)
                if cancel.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the request, which reports it
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, end)

    future = loop.run_in_executor(executor, produce)
    try:
        while (item := await queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()  # a client that went away stops the answer at its next token
        await asyncio.shield(future)


@router.post("/ask", response_model=AskResponse, summary="Answer from the knowledge base, with citations",
             responses={**ERRORS, 200: {"description": 'the answer; with "stream": true, server-sent events '
                                        '(passages, delta, done) ending with "data: [DONE]"',
                                        "content": {"text/event-stream": {}}}})
async def ask(body: AskRequest, request: Request, registry: Registry, settings: Settings):
    from lmforge.kb.ask import ask as answer

    kb = _kb(registry)
    if not body.question.strip():
        raise HTTPException(422, "question is blank")
    served = _reader(registry, body.reader)
    limit = min(body.max_new_tokens, settings.max_new_tokens)
    make = lambda cancel: answer(kb, body.question, served.pipeline, k=body.k, mode=body.mode,
                                 min_similarity=body.min_similarity, max_new_tokens=limit, cancel=cancel)
    if not body.stream:
        result: dict = {}
        async for event in _events(make, served.executor, threading.Event()):
            if event["type"] in ("passages", "done"):
                result.update({k: v for k, v in event.items() if k != "type"})
        return result

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for event in _events(make, served.executor, threading.Event()):
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        except Exception as exc:  # noqa: BLE001 - the 200 is sent: end the stream with an error event
            request_id = report_internal_error(request.method, request.url.path, exc)
            yield f"data: {json.dumps({'type': 'error', 'detail': f'internal error; request id {request_id}'})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
