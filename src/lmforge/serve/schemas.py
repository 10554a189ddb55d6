"""Request and response models (strict: unknown fields are refused with 422)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong and how to fix it")


class ClassifyRequest(Strict):
    model: str | None = Field(None, description="model name (see GET /v1/models); default: the first loaded")
    inputs: str | list[str] = Field(description="one text or a list of texts")
    truncate: bool = Field(False, description="cut inputs longer than the model's max length instead of refusing them")


class ClassifyResult(BaseModel):
    label: str
    score: float = Field(description="probability of the predicted label")
    probabilities: dict[str, float] = Field(description="probability of every label")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "lmforge"
    task: str
    labels: list[str] | None = None
    max_length: int | None = None
    metrics: dict[str, Any] | None = Field(None, description="the run's last evaluation (eval.json)")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ModelDetail(ModelCard):
    curve: list[list[float]] = Field(default_factory=list, description="[step, train loss] points")
    eval_curve: list[list[float]] = Field(default_factory=list, description="[step, dev metric] points")
    eval_metric: str | None = None
    config: dict[str, Any] | None = None


ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request: fields, batch size or input length"},
    429: {"model": ErrorResponse, "description": "too many requests in flight; retry after the Retry-After seconds"},
    503: {"model": ErrorResponse, "description": "models still loading, or the server is shutting down"},
}
