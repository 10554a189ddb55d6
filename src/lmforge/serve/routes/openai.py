"""OpenAI-compatible API: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (plain or streamed as SSE).

The official ``openai`` client talks to these unchanged. Errors come in OpenAI's shape with its status codes (400 for
an invalid request, 401, 404 for an unknown model, 413, 429, 503). Generation runs on the model's worker thread; a
client that disconnects mid-stream stops its generation at the next token and frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmforge.inference.generation import Delta, SamplingParams
from lmforge.serve.deps import ApiKey, Ready, Registry, Settings
from lmforge.serve.errors import openai_error, report_internal_error
from lmforge.serve.registry import ServedModel
from lmforge.serve.schemas import error_responses
from lmforge.serve.settings import ServeSettings

ROUTE = "openai"  # what a task lists in its ``routes`` to be served here (lmforge.tasks.registry)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[ApiKey, Ready])

T = TypeVar("T")
# Chat templating and tokenizing are CPU work (~0.5 s for an 800 KB body) and must not run on the event loop. They
# get their own threads, at most half the cores: with one thread per request, 8 big bodies kept both cores of a small
# machine busy and /health/live waited up to 0.6 s for a turn. Encoding only reads a generative model's tokenizer,
# so it may run beside generation on the model's worker.
_PREPROCESS = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="lmforge-prep")


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_PREPROCESS, fn, *args)


class OpenAIError(BaseModel):
    class Body(BaseModel):
        message: str
        type: str
        param: str | None = None
        code: str | None = None

    error: Body


OPENAI_ERRORS = error_responses(OpenAIError, {400: "invalid request (parameters, prompt too long for the context)"})
OPENAI_RESPONSES = {
    200: {"description": 'the completion; with "stream": true, server-sent events ending with "data: [DONE]"',
          "content": {"text/event-stream": {"schema": {  # one event (OpenAPI 3.1: the schema of each event)
              "type": "object", "required": ["data"],
              "properties": {"data": {"type": "string", "description": "a JSON chunk, or [DONE] after the last"}}}}}},
    **OPENAI_ERRORS,
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


INT64 = (-(2**63), 2**63 - 1)


class _Sampling(BaseModel):
    # strict: no coercion, so "stream": 0 or "n": "2" is a 400 like any other wrong type; NaN and infinity are refused
    # (JSON parsers accept them), so no sampling parameter reaches the sampler non-finite
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(description="model name (GET /v1/models)")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy (so is anything below 1e-5)")
    top_p: float = Field(1.0, gt=0, le=1, description="sample from the smallest set of tokens whose mass reaches top_p")
    n: int = Field(1, ge=1, le=8, description="completions per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 sequences that end the completion")
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1],
                             description="makes sampling reproducible; a signed 64-bit integer")
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # lmforge extensions
    top_k: int = Field(0, ge=0, description="lmforge extension: sample among the k most likely tokens (0: off)")
    repetition_penalty: float = Field(
        1.0, ge=0.01, le=10,
        description="lmforge extension: HF-style repetition penalty; 1 is off, above 1 discourages repeats, below 1 "
                    "encourages them; 0.01 to 10 (further out it swamps the logits)")


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate: 16 when not given (or the server's cap, "
                                                         "if lower)")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="log-probabilities of each generated token and of "
                                 "the N likeliest at its step (0 to 5)")
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="return each generated token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: also the N likeliest tokens "
                                     "at each step (0 to 20)")
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": '
        '{"name": ..., "schema": {...}}}: the output is constrained while it is decoded to JSON (matching the schema)')


def bad_request(message: str, param: str | None = None) -> HTTPException:
    """A 400 in OpenAI's shape naming the request field at fault (the OpenAI routes' one refusal)."""
    error = HTTPException(400, message)
    error.param = param  # type: ignore[attr-defined]  # OpenAI's error body names the offending parameter
    return error


def _unsupported(body: _Sampling) -> None:
    checks = [("presence_penalty", body.presence_penalty != 0), ("frequency_penalty", body.frequency_penalty != 0),
              ("logit_bias", bool(body.logit_bias))]
    if isinstance(body, CompletionRequest):
        checks += [("best_of", body.best_of not in (None, 1)), ("suffix", body.suffix is not None)]
    if isinstance(body, ChatRequest):
        checks += [("tools", bool(body.tools)), ("tool_choice", body.tool_choice not in (None, "none"))]
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    for name, used in checks:
        if used:
            raise bad_request(f"'{name}' is not supported by lmforge; remove it (top_k and repetition_penalty are available)",
                       name)


def _logprobs_asked(body: _Sampling) -> int | None:
    """How many alternatives per token the request wants log-probabilities for (None: no log-probabilities)."""
    if isinstance(body, CompletionRequest):
        return body.logprobs
    return (body.top_logprobs or 0) if body.logprobs else None


async def _extras(served: ServedModel, body: _Sampling, count: int) -> dict:
    """What only the continuous scheduler does: per-token log-probabilities and a grammar per sequence."""
    from lmforge.serve.batching import ContinuousBatcher

    asked = {"logprobs": _logprobs_asked(body)}
    response_format = getattr(body, "response_format", None)
    structured = response_format not in (None, {"type": "text"})
    if (asked["logprobs"] is not None or structured) and not isinstance(served.generation, ContinuousBatcher):
        name = "logprobs" if asked["logprobs"] is not None else "response_format"
        raise bad_request(f"'{name}' needs the continuous scheduler, which model '{served.name}' is not served with "
                   "(a model lmforge has no static-cache engine for, or --scheduler static)", name)
    if structured:
        asked["constraints"] = await _off_loop(_constraints, served, response_format, count)  # ~1 ms a schema
    return asked


def _constraints(served: ServedModel, response_format: dict, count: int) -> list:
    from lmforge.inference.structured import grammar_for

    generator = served.pipeline.generator
    try:
        grammar = grammar_for(generator.tokenizer, response_format, generator.eos_ids)
    except ValueError as exc:  # ResponseFormatError: its message names the part of response_format at fault
        raise bad_request(str(exc), "response_format") from exc
    return [grammar.constraint() for _ in range(count)]


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise bad_request(f"'stop' takes at most 4 sequences, got {len(stops)}", "stop")
    return [s for s in stops if s]


def _params(body: _Sampling, max_new: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                          repetition_penalty=body.repetition_penalty, stop=_stops(body.stop), seed=body.seed)


def _budget(served: ServedModel, prompt_lengths: list[int], requested: int | None, settings: ServeSettings,
            default: int | None) -> int:
    """max_tokens within the server's cap and the model's context, or a 400 in OpenAI's words."""
    context = served.pipeline.context
    limit_prompt = settings.max_prompt_tokens or context
    longest = max(prompt_lengths)
    if longest > limit_prompt:
        raise bad_request(f"the prompt has {longest} tokens; this server accepts at most {limit_prompt}", "messages")
    # unasked, the default never exceeds the cap: a server started with a cap below 16 still answers plain requests
    max_new = requested if requested is not None else min(default or settings.max_new_tokens, settings.max_new_tokens)
    if max_new > settings.max_new_tokens:
        raise bad_request(f"max_tokens is {max_new}; this server generates at most {settings.max_new_tokens} per request",
                   "max_tokens")
    if requested is not None and longest + max_new > context:
        raise bad_request(f"This model's maximum context length is {context} tokens. However, you requested "
                   f"{longest + max_new} tokens ({longest} in the prompt, {max_new} for the completion). Please "
                   "reduce the prompt or the completion length.", "max_tokens")
    return max(1, min(max_new, context - longest))


def _generative(registry, name: str) -> ServedModel:
    served = registry.models.get(name)
    if served is None:
        raise HTTPException(404, f"The model '{name}' does not exist; loaded: {', '.join(registry.models)}")
    if ROUTE not in served.routes:
        raise bad_request(f"model '{name}' is a {served.task} model; completions need a generative model", "model")
    return served


async def _run_stream(served: ServedModel, prompts: list, params: SamplingParams, cancel: threading.Event,
                      metrics, extras: dict | None = None) -> AsyncIterator[Delta]:
    """Generate (batched with concurrent requests), handing deltas to the event loop as they come."""
    try:
        async for item in served.generation.stream(prompts, params, cancel, **{k: v for k, v in (extras or {}).items()
                                                                              if v is not None}):
            if item.finish_reason:
                metrics.generated_tokens.labels(served.name).inc(item.completion_tokens)
            yield item
    finally:
        cancel.set()  # a client that went away stops its sequence at the next token; the batch goes on


async def _collect(stream: AsyncIterator[Delta], count: int) -> tuple[list[str], list[str], list[int], list[list]]:
    """Drain a stream into per-choice texts, finish reasons, completion token counts and token log-probabilities."""
    texts, reasons, counts, records = [""] * count, ["length"] * count, [0] * count, [[] for _ in range(count)]
    async for d in stream:
        texts[d.index] += d.text
        records[d.index] += d.logprobs or []
        if d.finish_reason:
            reasons[d.index], counts[d.index] = d.finish_reason, d.completion_tokens
    return texts, reasons, counts, records


def _chat_logprobs(records: list) -> dict:
    """OpenAI's chat ``logprobs``: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    entry = lambda token, logprob: {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    return {"content": [{**entry(r.token, r.logprob), "top_logprobs": [entry(t, lp) for t, lp in r.top]}
                        for r in records], "refusal": None}


def _completion_logprobs(records: list, offset: int) -> dict:
    """OpenAI's legacy completion ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset."""
    offsets = []
    for r in records:
        offsets.append(offset)
        offset += len(r.token)
    return {"tokens": [r.token for r in records], "token_logprobs": [r.logprob for r in records],
            "top_logprobs": [dict(r.top) for r in records], "text_offset": offsets}


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _guarded(events: AsyncIterator[bytes], request: Request) -> AsyncIterator[bytes]:
    """A stream's 200 is sent before generation runs, so a later failure cannot change the status: it ends the stream
    with an error event in OpenAI's shape and ``[DONE]`` (the openai client raises it) instead of a cut connection."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - logged with its traceback; the client gets the request id to quote
        request_id = report_internal_error(request.method, request.url.path, exc)
        yield _sse(openai_error(500, f"internal error while generating; request id {request_id}"))
        yield _sse("[DONE]")


def _streaming(events: AsyncIterator[bytes], request: Request) -> StreamingResponse:
    return StreamingResponse(_guarded(events, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@router.post("/completions", summary="OpenAI-compatible text completion", responses=OPENAI_RESPONSES)
async def completions(body: CompletionRequest, request: Request, registry: Registry, settings: Settings):
    _unsupported(body)
    served = _generative(registry, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or len(prompts) * body.n > settings.max_batch_inputs:
        raise bad_request(f"send 1 to {settings.max_batch_inputs} prompts (times n)", "prompt")
    encoded = await _off_loop(lambda: [served.pipeline.prompt_ids(p) for p in prompts])
    max_new = _budget(served, [len(e) for e in encoded], body.max_tokens, settings, 16)
    params = _params(body, max_new)
    batch = [e for e in encoded for _ in range(body.n)]
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    prefix = [prompts[i // body.n] if body.echo else "" for i in range(len(batch))]
    prompt_tokens = sum(len(e) for e in encoded)
    extras = await _extras(served, body, len(batch))
    cancel = threading.Event()
    stream = _run_stream(served, batch, params, cancel, request.app.state.metrics, extras)
    logprobs = extras["logprobs"] is not None

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": ident, "object": "text_completion", "created": created, "model": served.name, "choices": choices}
        if body.stream_options and body.stream_options.include_usage:
            out["usage"] = usage
        return out

    if body.stream:
        async def events():
            completion_tokens = 0
            offsets = [len(p) for p in prefix]  # where each choice's next token starts in its text
            sent_prefix = set()
            async for d in stream:
                text = (prefix[d.index] if d.index not in sent_prefix else "") + d.text
                sent_prefix.add(d.index)
                completion_tokens += d.completion_tokens
                scores = _completion_logprobs(d.logprobs or [], offsets[d.index]) if logprobs else None
                offsets[d.index] += len(d.text)
                yield _sse(chunk([{"index": d.index, "text": text, "logprobs": scores,
                                   "finish_reason": d.finish_reason}]))
            if body.stream_options and body.stream_options.include_usage:
                yield _sse(chunk([], _usage(prompt_tokens, completion_tokens)))
            yield _sse("[DONE]")

        return _streaming(events(), request)
    texts, reasons, counts, records = await _collect(stream, len(batch))
    return JSONResponse({
        "id": ident, "object": "text_completion", "created": created, "model": served.name,
        "choices": [{"index": i, "text": prefix[i] + t, "finish_reason": reasons[i],
                     "logprobs": _completion_logprobs(records[i], len(prefix[i])) if logprobs else None}
                    for i, t in enumerate(texts)],
        "usage": _usage(prompt_tokens, sum(counts)),
    })


def _message_text(message: ChatMessage) -> dict[str, str]:
    content = message.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text":
                raise bad_request(f"content parts of type '{part.get('type')}' are not supported; send text", "messages")
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": content}


async def _chat_prompt(served: ServedModel, messages: list[dict[str, str]]) -> list[int]:
    """The conversation through the model's chat template, tokenized (off the event loop); a template that refuses
    the conversation is a 400."""
    from jinja2 import TemplateError

    try:
        return await _off_loop(served.pipeline.chat_prompt, messages)
    except TemplateError as exc:  # e.g. a template's raise_exception("roles must alternate ...")
        raise bad_request(f"model '{served.name}' cannot format these messages: {exc}", "messages") from exc


@router.post("/chat/completions", summary="OpenAI-compatible chat completion", responses=OPENAI_RESPONSES)
async def chat_completions(body: ChatRequest, request: Request, registry: Registry, settings: Settings):
    _unsupported(body)
    served = _generative(registry, body.model)
    if not served.pipeline.has_chat_template:
        raise bad_request(served.pipeline.no_chat.what + "; " + served.pipeline.no_chat.fix, "model")
    prompt = await _chat_prompt(served, [_message_text(m) for m in body.messages])
    requested = body.max_completion_tokens or body.max_tokens
    max_new = _budget(served, [len(prompt)], requested, settings, None)
    params = _params(body, max_new)
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    extras = await _extras(served, body, body.n)
    cancel = threading.Event()
    stream = _run_stream(served, [prompt] * body.n, params, cancel, request.app.state.metrics, extras)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    logprobs = extras["logprobs"] is not None

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": served.name,
               "choices": choices}
        if include_usage:
            out["usage"] = usage
        return out

    if body.stream:
        async def events():
            completion_tokens = 0
            for i in range(body.n):
                yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
            async for d in stream:
                completion_tokens += d.completion_tokens
                if d.text or d.logprobs:
                    choice = {"index": d.index, "delta": {"content": d.text}, "finish_reason": None}
                    if logprobs:
                        choice["logprobs"] = _chat_logprobs(d.logprobs or [])
                    yield _sse(chunk([choice]))
                if d.finish_reason:
                    yield _sse(chunk([{"index": d.index, "delta": {}, "finish_reason": d.finish_reason}]))
            if include_usage:
                yield _sse(chunk([], _usage(len(prompt), completion_tokens)))
            yield _sse("[DONE]")

        return _streaming(events(), request)
    texts, reasons, counts, records = await _collect(stream, body.n)
    return JSONResponse({
        "id": ident, "object": "chat.completion", "created": created, "model": served.name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": reasons[i],
                     "logprobs": _chat_logprobs(records[i]) if logprobs else None} for i, t in enumerate(texts)],
        "usage": _usage(len(prompt), sum(counts)),
    })
