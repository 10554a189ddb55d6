"""Schemathesis against the served OpenAPI schema: a real uvicorn server with a real tiny classifier and a real tiny
chat model, so every route, the generation ones included, is reached. Whatever it sends, the server must answer
without a 5xx, with a status the schema documents, in the documented content type and shape."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings
from tests.serve.live import uvicorn_in_thread

GENERATION = ("/v1/completions", "/v1/chat/completions")
# the classifier is the default model for /v1/classify; the generation routes need a name: the chat model answers both;
# /v1/qa its QA run, /v1/embeddings the classifier's encoder, and /v1/kb/ask a reader (its "reader" field)
MODEL_FOR = {**{path: "chat" for path in GENERATION}, "/v1/qa": "qa", "/v1/embeddings": "sentiment"}
READER_FOR = {"/v1/kb/ask": "chat"}
seen: Counter = Counter()  # (path, status) over the whole run, to check the models were really reached


@pytest.fixture(scope="module")
def served_url(classify_run, chat_run, qa_run, kb_dir):
    # small caps keep each generated request cheap; they are limits like any other (a 400/422 beyond them)
    settings_ = ServeSettings(max_new_tokens=8, max_batch_inputs=4, max_input_chars=2_000, kb=kb_dir)
    app = create_app([f"sentiment={classify_run}", f"chat={chat_run}", f"qa={qa_run}"], settings_,
                     load_in_background=False)
    with uvicorn_in_thread(app) as url:
        yield url


# Valid per the schema, yet refused on purpose: caps that are server settings (inputs per request, characters, tokens,
# the model's context) and rules a JSON schema does not carry (a blank input, a non-text content part). Those answers
# are the documented 400 (OpenAI routes) and 422; anything else for valid data still fails the check.
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "400", "401", "404", "422", "429"]}}})


@pytest.fixture(scope="module")
def api_schema(served_url):
    return schemathesis.openapi.from_url(served_url + "/openapi.json", config=CONFIG)


def _constrained(schema: dict) -> bool:
    """Can a value of this parameter be invalid? (Any string is a valid free-text path segment or header.)"""
    options = schema.get("anyOf", [schema])
    return not any(o.get("type") == "string" and not (o.keys() & {"enum", "pattern", "maxLength", "minLength"})
                   for o in options)


def _cases() -> list:
    """(operation, mode) for every operation the app documents (its own schema: no models needed): valid data for
    each, invalid data for each that takes any input."""
    paths = create_app([], ServeSettings(kb="kb")).openapi()["paths"]  # a KB adds its routes (opened at start-up)
    cases = []
    for path, item in paths.items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            cases.append(pytest.param(label, GenerationMode.POSITIVE, id=f"{label} valid"))
            if operation.get("requestBody") or any(_constrained(p.get("schema", {}))
                                                   for p in operation.get("parameters", [])):
                cases.append(pytest.param(label, GenerationMode.NEGATIVE, id=f"{label} invalid"))
    return cases


# The bounds: 25 cases per operation and mode, the same ones every run (derandomized: the default suite must not
# flake), 10 s at most per request, no example database written into the checkout. ~10 s for all of them on 2 cores.
FAST = settings(max_examples=25, deadline=10_000, derandomize=True, database=None, print_blob=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
# `pytest -m slow`: 150 fresh random cases per operation and mode (~30 s), shrunk to the smallest when one fails
SLOW = settings(FAST, max_examples=150, derandomize=False, phases=[Phase.explicit, Phase.generate, Phase.shrink])


def _steer(case) -> None:
    """Random model names only ever reach the 404; a valid name in their place lets the model run. Only a name that
    is already a string is replaced, so a case generated to be invalid stays invalid."""
    if case.path in MODEL_FOR and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = MODEL_FOR[case.path]
    if case.path in READER_FOR and isinstance(case.body, dict) and isinstance(case.body.get("reader"), str):
        case.body["reader"] = READER_FOR[case.path]
    name = (case.path_parameters or {}).get("name")
    if case.path == "/v1/models/{name}" and isinstance(name, str) and len(name) % 3:  # a third stay unknown: 404
        case.path_parameters["name"] = ("sentiment", "chat")[len(name) % 3 - 1]


def fuzz(api_schema, label: str, mode: GenerationMode, limits: settings) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served schema"

    @limits
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        _steer(case)
        response = case.call_and_validate(timeout=60)
        seen[(case.path, response.status_code)] += 1
        assert response.status_code < 500, response.text

    run()


@pytest.mark.parametrize(("label", "mode"), _cases())
def test_no_5xx_and_responses_match_the_schema(api_schema, label, mode):
    fuzz(api_schema, label, mode, FAST)


@pytest.mark.slow
@pytest.mark.parametrize(("label", "mode"), _cases())
def test_no_5xx_in_a_longer_random_run(api_schema, label, mode):
    fuzz(api_schema, label, mode, SLOW)


def test_the_models_were_reached():
    # runs after the fuzzing above (same module, file order): valid requests got real answers from both models
    if not seen:
        pytest.skip("counts what the fuzzing tests above sent; run it with them")
    print("fuzzed:", ", ".join(f"{path} {status}: {n}" for (path, status), n in sorted(seen.items())))
    for path in ("/v1/classify", *GENERATION, "/v1/qa", "/v1/embeddings", "/v1/kb/search", "/v1/kb/ask"):
        assert seen[(path, 200)] >= 1, (path, sorted(seen.items()))
