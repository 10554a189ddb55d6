"""Request and response models (strict: unknown fields are refused with 422)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    # no unknown fields, no coercion: "truncate": 0 is a 422 like any other wrong type
    model_config = ConfigDict(extra="forbid", strict=True)


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
    windows: int = Field(1, description="how many windows of max_length tokens the text was read as (more than one "
                         "only for a model that reads long texts in windows)")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class Seq2SeqRequest(Strict):
    model: str | None = Field(None, description="model name (see GET /v1/models); default: the first loaded")
    inputs: str | list[str] = Field(description="one text or a list of texts")
    truncate: bool = Field(False, description="cut inputs longer than the model's max length instead of refusing them")
    num_beams: int | None = Field(None, ge=1, le=8, description="beam width (1: greedy); default: the run's")
    max_new_tokens: int | None = Field(None, ge=1, le=512, description="longest output in tokens; default: the run's")
    length_penalty: float | None = Field(None, ge=-5, le=5, description="beam scores are divided by length ** this")
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=10, description="never repeat an n-gram of this size")
    do_sample: bool | None = Field(None, description="sample instead of taking the likeliest tokens; default: the run's")
    temperature: float | None = Field(None, gt=0, le=5, description="sampling: divide the logits by this")
    top_p: float | None = Field(None, gt=0, le=1, description="sampling: nucleus mass to sample from")
    top_k: int | None = Field(None, ge=0, le=1000, description="sampling: the k likeliest tokens only (0: off)")
    shots: int | None = Field(None, ge=0, le=16, description="a causal LM: training pairs of the task shown before "
                              "each text (few-shot, greedy); default: 4 for a base model (no chat template), else 0")

    DECODING: ClassVar[set[str]] = {"num_beams", "max_new_tokens", "length_penalty", "no_repeat_ngram_size",
                                    "do_sample", "temperature", "top_p", "top_k"}


class Seq2SeqResult(BaseModel):
    text: str


class Seq2SeqResponse(BaseModel):
    model: str
    results: list[Seq2SeqResult]


class QAPair(Strict):
    question: str = Field(min_length=1, description="the question")
    context: str = Field(min_length=1, description="the text that holds its answer")


class QARequest(Strict):
    # the two forms, in the schema too: a question with its context, or a batch of them
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["question", "context"]},
                                                           {"required": ["inputs"]}]})

    model: str | None = Field(None, description="model name (see GET /v1/models); default: the first that answers "
                              "questions")
    question: str | None = Field(None, min_length=1, description="one question (with context; or send inputs)")
    context: str | None = Field(None, min_length=1, description="the text to find its answer in")
    inputs: list[QAPair] | None = Field(None, description="a batch of {question, context} (instead of question and "
                                        "context)")
    truncate: bool = Field(False, description="cut a question longer than a window holds beside the context instead "
                           "of refusing it (contexts are never cut: a long one is read in overlapping windows)")

    @model_validator(mode="after")
    def _one_form(self):
        single = self.question is not None or self.context is not None
        if single and self.inputs is not None:
            raise ValueError("send question and context, or inputs, not both")
        if not single and self.inputs is None:
            raise ValueError("send question and context, or inputs: a list of {question, context}")
        if single and (self.question is None or self.context is None):
            raise ValueError(f"{'context' if self.context is None else 'question'} is missing: send question and "
                             "context together")
        return self

    def pairs(self) -> list[QAPair]:
        return self.inputs if self.inputs is not None else [QAPair(question=self.question, context=self.context)]


class QAResult(BaseModel):
    answer: str = Field(description="the answer: context[start:end]")
    score: float = Field(description="P(start) x P(end) of the answer's span in its window")
    start: int = Field(description="character offset in the context where the answer starts (Unicode code points)")
    end: int = Field(description="character offset in the context where the answer ends (exclusive)")
    windows: int = Field(1, description="how many windows of max_length tokens the context was read as")


class QAResponse(BaseModel):
    model: str
    results: list[QAResult]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "lmforge"
    task: str
    routes: list[str] = Field(default_factory=list, description="the API routes that answer this model")
    chat: bool | None = Field(None, description="generative models: whether it has a chat template")
    labels: list[str] | None = None
    max_length: int | None = None
    long_inputs: str | None = Field(None, description="classifiers: how texts longer than max_length are read "
                                    "(truncate, head-tail or windows)")
    max_windows: int | None = Field(None, description="windows: the most one text is read as; a longer text is "
                                    "refused with 422 unless the request sends truncate")
    metrics: dict[str, Any] | None = Field(None, description="the run's last evaluation (eval.json)")
    family: str | None = Field(None, description="encoder, decoder or encoder-decoder")
    parameters: int | None = Field(None, description="parameters of the model")
    size_mb: float | None = Field(None, description="the model folder's size on disk")
    license: str | None = Field(None, description="the weights' own license terms, when they have any (gemma3 and "
                                "runs made from it: the Gemma Terms of Use)")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ModelDetail(ModelCard):
    curve: list[list[float]] = Field(default_factory=list, description="[step, train loss] points")
    eval_curve: list[list[float]] = Field(default_factory=list, description="[step, dev metric] points")
    eval_metric: str | None = None
    config: dict[str, Any] | None = None
    bias: dict[str, Any] | None = Field(None, description="the last bias probe (lmforge probe bias): per set and "
                                        "group, the mean change of the label's probability and the flip rate")


# what every route's errors mean; each route family answers them in its own body shape
ERROR_MEANINGS = {
    401: "missing or wrong API key",
    404: "unknown model",
    413: "request body too large",
    429: "too many requests in flight; retry after the Retry-After seconds",
    503: "models still loading, or the server is shutting down",
}


def error_responses(body: type[BaseModel], meanings: dict[int, str]) -> dict[int, dict]:
    """OpenAPI ``responses`` for the shared errors plus ``meanings``, each documented with the ``body`` model."""
    merged = {**ERROR_MEANINGS, **meanings}
    return {status: {"model": body, "description": merged[status]} for status in sorted(merged)}


ERRORS = error_responses(ErrorResponse, {400: "the body could not be read (not UTF-8)",
                                         422: "invalid request: fields, batch size or input length"})
