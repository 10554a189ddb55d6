"""OpenAI-compatible ``POST /v1/embeddings``: a sentence vector per input text, from ``minilm`` (``lmforge serve
minilm``) or the encoder of a classification, QA or masked-LM run.

The official ``openai`` client works unchanged (``client.embeddings.create(model="minilm", input=[...])``; it asks
for base64 by default and decodes it). The vectors are the knowledge bases' own: mean-pooled over the real tokens and
L2-normalized, as sentence-transformers does for all-MiniLM-L6-v2 (:class:`lmforge.inference.pipelines
.EmbeddingPipeline`), in float32. Texts are tokenized once on the model's worker thread; concurrent requests'
token ids are gathered into one forward pass there (``--batch-wait-ms``, ``--batch-max-inputs``), off the event loop.
An input longer than the model reads (minilm: 256 tokens) is refused with a 400 naming it, as OpenAI does, unless the
request sends the lmforge extension ``"truncate": true``. Errors come in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from lmforge.serve.batching import MicroBatcher
from lmforge.serve.deps import ApiKey, Ready, Registry, Settings, check_text
from lmforge.serve.registry import ModelRegistry, ServedModel
from lmforge.serve.routes.openai import OpenAIError, bad_request
from lmforge.serve.schemas import error_responses
from lmforge.serve.settings import ServeSettings

ROUTE = "embeddings"  # what a task lists in its ``routes`` to be served here (lmforge.tasks.registry)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[ApiKey, Ready])


class EmbeddingRequest(BaseModel):
    # strict like the other OpenAI routes: unknown fields and wrong types ("dimensions": "384") are a 400
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(description="model name (GET /v1/models): minilm, or a classification, QA or masked-LM run")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or a list of texts (at most the server's --max-batch-inputs); arrays of token ids are "
                    "refused: each lmforge model has its own vocabulary, so send the text")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: the little-endian float32 bytes, base64-encoded")
    dimensions: int | None = Field(None, ge=1, description="the vectors' size, if given: it must be the model's own "
                                   "(minilm: 384); lmforge's encoders are not trained to be cut shorter")
    user: str | None = Field(None, description="an end-user id (accepted, not used)")
    truncate: bool = Field(False, description="lmforge extension: cut inputs longer than the model reads (minilm: "
                           "256 tokens) instead of refusing them")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the unit vector; with base64, its float32 bytes encoded")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens the model read, its special tokens included")
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


RESPONSES = {
    200: {"model": EmbeddingResponse, "description": "one embedding per input, in the inputs' order"},
    **error_responses(OpenAIError, {400: "invalid request: an empty, too long or token-id input, too many inputs, "
                                         "dimensions other than the model's, a model that gives no embeddings"}),
}


def _encoder(registry: ModelRegistry, name: str) -> ServedModel:
    served = registry.models.get(name)
    if served is None:
        raise HTTPException(404, f"The model '{name}' does not exist; loaded: {', '.join(registry.models)}")
    if ROUTE not in served.routes:
        answering = [n for n, m in registry.models.items() if ROUTE in m.routes]
        raise bad_request(f"model '{name}' is a {served.task} model, which gives no embeddings; "
                   + (f"models that do: {', '.join(answering)}" if answering else
                      "serve an encoder for them: minilm, or a classification or masked-LM run"), "model")
    return served


def _texts(given: str | list, settings: ServeSettings) -> list[str]:
    """The request's texts, checked against the server's limits (a 400 naming the input that breaks one)."""
    texts = [given] if isinstance(given, str) else given
    if not texts:
        raise bad_request("'input' is empty: send a text or a list of texts", "input")
    if not all(isinstance(t, str) for t in texts):
        raise bad_request("token-id input is not supported: each lmforge model has its own vocabulary, so send the texts",
                   "input")
    if len(texts) > settings.max_batch_inputs:
        raise bad_request(f"{len(texts)} inputs in one request; the limit is {settings.max_batch_inputs}: split them over "
                   "several requests", "input")
    for i, text in enumerate(texts):
        try:
            check_text(text, "input" if isinstance(given, str) else f"input {i}", settings)
        except HTTPException as exc:  # the server's own limits, in OpenAI's words
            raise bad_request(str(exc.detail), "input") from None
    return texts


def _pipeline(served: ServedModel):
    """The model's embedding pipeline: its own (minilm, an encoder folder), or for a run with a task head one over
    the same folder's encoder, made on the first request (on the model's worker: it loads weights)."""
    from lmforge.inference.pipelines import EmbeddingPipeline

    if isinstance(served.pipeline, EmbeddingPipeline):
        return served.pipeline
    if "embeddings" not in served.extra:
        loaded = served.pipeline
        served.extra["embeddings"] = EmbeddingPipeline(loaded.model_dir, name=served.name, info=loaded.info,
                                                       device=str(loaded.device), task=loaded.task)
    return served.extra["embeddings"]


def _batcher(served: ServedModel, pipeline, settings: ServeSettings, metrics) -> MicroBatcher:
    """Concurrent requests' token ids, embedded together on the model's worker (one per model, made on first use)."""
    if "embeddings:batcher" not in served.extra:
        served.extra["embeddings:batcher"] = MicroBatcher(
            lambda encoded: list(pipeline.embed_tokens(encoded)), served.executor,
            max_inputs=settings.batch_max_inputs, max_wait_ms=settings.batch_wait_ms, enabled=settings.micro_batch,
            on_batch=lambda n: metrics.batch_size.labels(served.name).observe(n))
    return served.extra["embeddings:batcher"]


def _encoded(vector, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what OpenAI sends: little-endian float32, base64
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/embeddings", summary="OpenAI-compatible embeddings: a unit vector per text", response_model=None,
             responses=RESPONSES)
async def embeddings(body: EmbeddingRequest, request: Request, registry: Registry, settings: Settings) -> JSONResponse:
    from lmforge.inference.pipelines import InputTooLong

    served = _encoder(registry, body.model)
    texts = _texts(body.input, settings)
    loop = asyncio.get_running_loop()
    pipeline = await loop.run_in_executor(served.executor, _pipeline, served)
    if body.dimensions is not None and body.dimensions != pipeline.dim:
        raise bad_request(f"model '{served.name}' gives {pipeline.dim}-dimensional vectors and cannot shorten them: send "
                   f"dimensions {pipeline.dim}, or leave it out", "dimensions")
    # tokenizing 64 long texts is CPU work: on the model's worker, which also owns the tokenizer's truncation setting
    tokenize = functools.partial(pipeline.tokenize, texts, truncate=body.truncate)
    try:
        encoded = await loop.run_in_executor(served.executor, tokenize)
    except InputTooLong as exc:
        raise bad_request(f"{exc.what}; {exc.fix}", "input") from None
    vectors = await _batcher(served, pipeline, settings, request.app.state.metrics).submit(encoded)
    tokens = sum(len(ids) for ids in encoded)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": served.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
