"""``POST /v1/explain``: why a served classifier decided — a score per word (Captum: integrated gradients or
occlusion) and, when asked, the attention weights of every layer and head. The explainer (the model with eager
attention, beside the served lean one) is loaded on the first request and kept; it runs on the model's worker."""

from __future__ import annotations

import asyncio
import functools
from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from lmforge.serve.deps import ApiKey, Ready, Registry, Settings, find_model
from lmforge.serve.schemas import ERRORS, Strict

ROUTE = "explain"
router = APIRouter(prefix="/v1", tags=["explain"], dependencies=[ApiKey, Ready])


class ExplainRequest(Strict):
    model: str | None = Field(None, description="model name (see GET /v1/models); default: the first classifier")
    text: str = Field(min_length=1, description="the text to explain")
    method: Literal["integrated-gradients", "occlusion"] = "integrated-gradients"
    target: str | None = Field(None, description="the label to explain (default: the predicted one)")
    steps: int = Field(32, ge=2, le=128, description="integrated gradients: points on the path")
    attention: bool = Field(False, description="also return the attention weights [layer][head][token][token]")


class WordScore(BaseModel):
    word: str
    start: int = Field(description="character offset in the text")
    end: int
    score: float = Field(description="toward the target label when positive")


class Attention(BaseModel):
    tokens: list[str]
    layers: int
    heads: int
    weights: list[list[list[list[float]]]]


class ExplainResponse(BaseModel):
    model: str
    label: str
    probabilities: dict[str, float]
    target: str
    method: str
    truncated: bool = Field(description="the text was longer than the model reads; words past it have no score")
    words: list[WordScore]
    attention: Attention | None = None


def _explainer(served):
    if "explainer" not in served.extra:
        from lmforge.inference.explain import Explainer

        served.extra["explainer"] = Explainer(served.pipeline.model_dir, served.pipeline.info)
    return served.extra["explainer"]


@router.post("/explain", response_model=ExplainResponse, response_model_exclude_none=True,
             summary="why a classifier decided: word attributions and attention", responses=ERRORS)
async def explain(body: ExplainRequest, registry: Registry, settings: Settings) -> dict:
    if not body.text.strip():
        raise HTTPException(422, "text is blank")
    if len(body.text) > settings.max_input_chars:
        raise HTTPException(422, f"text has {len(body.text):,} characters; the limit is {settings.max_input_chars:,}")
    served = find_model(registry, body.model, ROUTE)

    def run() -> dict:
        return _explainer(served).explain(body.text, method=body.method, target=body.target, steps=body.steps,
                                          attention=body.attention)

    result = await asyncio.get_running_loop().run_in_executor(served.executor, functools.partial(run))
    return {"model": served.name, **result}
