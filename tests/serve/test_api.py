"""Every route and status code through the ASGI test client: 200/401/404/413/422/429/503, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

import lmforge
from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings
from tests.serve.live import uvicorn_in_thread


def make_client(run, **settings) -> TestClient:
    app = create_app([f"sentiment={run}"], ServeSettings(**settings), load_in_background=False)
    return TestClient(app)


@pytest.fixture(scope="module")
def client(classify_run):
    with make_client(classify_run) as c:
        yield c


def test_classify_matches_the_python_api(client, classify_run):
    texts = ["a gorgeous, moving film", "a dull, lifeless mess", "it was fine"]
    response = client.post("/v1/classify", json={"inputs": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "sentiment"
    expected = lmforge.load(classify_run).predict(texts)
    assert [r["label"] for r in body["results"]] == [r["label"] for r in expected]
    for got, want in zip(body["results"], expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert got["score"] == pytest.approx(max(want["probabilities"].values()), abs=1e-5)
    single = client.post("/v1/classify", json={"inputs": "just one", "model": "sentiment"}).json()
    assert len(single["results"]) == 1


def test_models_health_metrics_ui(client, classify_run):
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/health/ready").status_code == 200
    models = client.get("/v1/models").json()
    card = models["data"][0]
    assert models["object"] == "list" and card["id"] == "sentiment" and card["task"] == "classify"
    evaluation = json.loads((classify_run / "eval.json").read_text())
    assert card["labels"] == ["negative", "positive"]
    assert card["metrics"]["accuracy"] == evaluation["accuracy"] and card["metrics"]["n"] == evaluation["n"] == 60
    detail = client.get("/v1/models/sentiment").json()
    assert len(detail["curve"]) >= 10 and detail["eval_metric"] == "accuracy" and len(detail["eval_curve"]) == 3
    assert client.get("/v1/models/nope").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and "<title>lmforge</title>" in page.text
    assert client.get("/static/app.js").status_code == 200
    metrics = client.get("/metrics").text
    assert 'lmforge_requests_total{method="GET",route="/v1/models",status="200"}' in metrics
    assert 'lmforge_requests_total{method="GET",route="/v1/models/{name}",status="404"}' in metrics
    assert "lmforge_request_latency_seconds_bucket" in metrics and "lmforge_batch_size_bucket" in metrics


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"inputs": []}, "inputs is empty"),
        ({"inputs": ["x"] * 65}, "65 inputs in one request; the limit is 64"),
        ({"inputs": "x" * 20_001}, "20,001 characters"),
        ({"inputs": ["fine", "   "]}, "input 1 is empty"),
        ({"inputs": "x", "temperature": 1}, "temperature: unknown field"),
        ({"text": "x"}, "inputs: Field required"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": " ".join(["word"] * 300)}, "longer than the model's 64 tokens"),
        ({"inputs": "x", "truncate": 0}, "truncate: Input should be a valid boolean"),  # no coercion (schemathesis)
        ({"inputs": "x", "model": 5}, "model: Input should be a valid string"),
    ],
)
def test_422_explains_the_problem(client, payload, fragment):
    response = client.post("/v1/classify", json=payload)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


def test_a_body_that_is_not_utf8_is_a_documented_400(client):
    # found by schemathesis: FastAPI answers 400 for a body it cannot decode; the schema now documents it
    response = client.post("/v1/classify", content=b'{"inputs": "\xff"}', headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json() == {"detail": "There was an error parsing the body"}
    assert "400" in client.get("/openapi.json").json()["paths"]["/v1/classify"]["post"]["responses"]


def test_truncation_only_when_asked(client):
    long_text = " ".join(["wonderful"] * 300)
    assert client.post("/v1/classify", json={"inputs": long_text}).status_code == 422
    assert client.post("/v1/classify", json={"inputs": long_text, "truncate": True}).status_code == 200


def test_404_unknown_model_names_the_loaded_ones(client):
    response = client.post("/v1/classify", json={"inputs": "x", "model": "gpt-9"})
    assert response.status_code == 404 and "loaded: sentiment" in response.json()["detail"]


def test_413_body_too_large(classify_run):
    with make_client(classify_run, max_body_bytes=2048) as c:
        response = c.post("/v1/classify", json={"inputs": ["y" * 500] * 8})
        assert response.status_code == 413 and "larger than 2,048 bytes" in response.json()["detail"]
        chunked = c.post("/v1/classify", content=iter([b'{"inputs": "', b"z" * 3000, b'"}']),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413


def test_401_api_key_constant_time_and_health_stays_open(classify_run):
    with make_client(classify_run, api_key="s3cret") as c:
        assert c.post("/v1/classify", json={"inputs": "x"}).status_code == 401
        wrong = c.post("/v1/classify", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401
        ok = c.post("/v1/classify", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health/ready").status_code == 200 and c.get("/health/live").status_code == 200


def test_cors_is_off_by_default_and_on_when_asked(classify_run, client):
    origin = {"Origin": "https://example.com"}
    assert "access-control-allow-origin" not in client.get("/v1/models", headers=origin).headers
    with make_client(classify_run, cors_origins=["https://example.com"]) as c:
        assert c.get("/v1/models", headers=origin).headers["access-control-allow-origin"] == "https://example.com"


def test_503_until_models_are_loaded(classify_run, monkeypatch):
    from lmforge.serve import registry as registry_module

    release = threading.Event()
    original = registry_module.ModelRegistry.load_all

    def slow_load(self):
        release.wait(30)
        original(self)

    monkeypatch.setattr(registry_module.ModelRegistry, "load_all", slow_load)
    app = create_app([f"sentiment={classify_run}"], ServeSettings())
    with TestClient(app) as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and "loading models: sentiment" in ready.json()["detail"]
        refused = c.post("/v1/classify", json={"inputs": "x"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert c.get("/health/live").status_code == 200
        release.set()
        app.state.registry.loaded.wait(30)
        assert c.get("/health/ready").status_code == 200
        assert c.post("/v1/classify", json={"inputs": "x"}).status_code == 200
        app.state.draining = True
        assert c.get("/health/ready").status_code == 503
        draining = c.post("/v1/classify", json={"inputs": "x"})
        assert draining.status_code == 503 and draining.json()["detail"] == "the server is shutting down"
        assert draining.headers["retry-after"] == "5"


def _async_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_429_when_too_many_requests_are_in_flight(classify_run):
    app = create_app([f"sentiment={classify_run}"], ServeSettings(max_in_flight=2, micro_batch=False),
                     load_in_background=False)
    app.state.registry.load_all()
    pipeline = app.state.registry.models["sentiment"].pipeline
    gate = threading.Event()
    original = pipeline.predict
    pipeline.predict = lambda texts, **kw: (gate.wait(10), original(texts, **kw))[1]

    async def scenario():
        async with _async_client(app) as c:
            slow = [asyncio.create_task(c.post("/v1/classify", json={"inputs": f"t{i}"})) for i in range(2)]
            await asyncio.sleep(0.3)
            busy = await c.post("/v1/classify", json={"inputs": "third"})
            health = await c.get("/health/live")
            gate.set()
            return busy, health, [await t for t in slow]

    busy, health, done = asyncio.run(scenario())
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert "2 requests in flight" in busy.json()["detail"]
    assert health.status_code == 200
    assert [r.status_code for r in done] == [200, 200]


def test_micro_batching_gathers_requests_and_returns_each_its_own(classify_run):
    app = create_app([f"sentiment={classify_run}"], ServeSettings(batch_wait_ms=50, batch_max_inputs=64),
                     load_in_background=False)
    app.state.registry.load_all()
    texts = [[f"review number {i} was {'great' if i % 2 else 'awful'}", f"second text {i}"] for i in range(8)]
    expected = [lmforge.load(classify_run).predict(t) for t in texts]
    pipeline = app.state.registry.models["sentiment"].pipeline
    passes, predict = [], pipeline.predict
    pipeline.predict = lambda batch, **kw: (passes.append(len(batch)), predict(batch, **kw))[1]  # each forward pass

    async def scenario():
        async with _async_client(app) as c:
            return await asyncio.gather(*[c.post("/v1/classify", json={"inputs": t}) for t in texts])

    responses = asyncio.run(scenario())
    for response, want in zip(responses, expected):
        got = response.json()["results"]
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert [g["probabilities"] for g in got] == [pytest.approx(w["probabilities"], abs=1e-5) for w in want]
    samples = {(s.name, s.labels.get("le")): s.value for s in app.state.metrics.registry.collect()
               for s in s.samples if s.name.startswith("lmforge_batch_size")}
    assert sum(passes) == 16 and len(passes) < 8  # every input once, in fewer forward passes than requests
    # the histogram holds exactly the passes that ran: their count, their sum, and how many fell in each bucket
    assert samples[("lmforge_batch_size_count", None)] == len(passes)
    assert samples[("lmforge_batch_size_sum", None)] == 16
    for bound in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "+Inf"):
        assert samples[("lmforge_batch_size_bucket", bound)] == sum(n <= float(bound) for n in passes), bound


def test_openapi_documents_every_status(client):
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/v1/classify"]["post"]["responses"]
    assert {"200", "401", "404", "413", "422", "429", "503"} <= set(responses)
    assert "503" in spec["paths"]["/health/ready"]["get"]["responses"]
    assert client.get("/docs").status_code == 200
    json.dumps(spec)


# ------------------------------------------------------------------ unexpected errors: JSON 500, connection kept
def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_open(classify_run, gpt_run, caplog):
    app = create_app([f"sentiment={classify_run}", f"gpt={gpt_run}"], ServeSettings(), load_in_background=False)
    with uvicorn_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        models = app.state.registry.models
        assert c.get("/health/ready").status_code == 200
        broken = RuntimeError("disk on fire")
        models["sentiment"].pipeline.cost = lambda texts, truncate: (_ for _ in ()).throw(broken)
        models["gpt"].pipeline.prompt_ids = lambda prompt: (_ for _ in ()).throw(broken)
        first = c.post("/v1/classify", json={"inputs": "fine"})
        with caplog.at_level(logging.ERROR, logger="lmforge"):
            failed = c.post("/v1/classify", json={"inputs": "a fine film"})
            failed_openai = c.post("/v1/completions", json={"model": "gpt", "prompt": "The", "max_tokens": 2})
        assert first.status_code == 500
        body = failed.json()
        assert failed.status_code == 500 and body == {"detail": f"internal error; request id {body['request_id']}",
                                                      "request_id": body["request_id"]}
        assert failed.headers["x-request-id"] == body["request_id"] and "disk" not in failed.text
        error = failed_openai.json()["error"]  # OpenAI's shape on the OpenAI-compatible routes
        assert failed_openai.status_code == 500 and error["type"] == "server_error"
        assert error["message"] == f"internal error; request id {failed_openai.headers['x-request-id']}"
        # logged under the "lmforge" logger, with the traceback, findable by the id the client was given
        for request_id in (body["request_id"], failed_openai.headers["x-request-id"]):
            record = next(r for r in caplog.records if request_id in r.getMessage())
            assert record.name == "lmforge" and record.exc_info[1] is broken
        # the keep-alive connection survived all three: the next requests go over the same socket and are served
        del models["sentiment"].pipeline.cost, models["gpt"].pipeline.prompt_ids
        ok = c.post("/v1/classify", json={"inputs": "a fine film"})
        ok_openai = c.post("/v1/completions", json={"model": "gpt", "prompt": "The", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["results"][0]["label"] in ("negative", "positive")
        assert ok_openai.status_code == 200 and ok_openai.json()["usage"]["completion_tokens"] >= 1
        assert {_local_port(r) for r in (first, failed, failed_openai, ok, ok_openai)} == {_local_port(first)}
        metrics = c.get("/metrics").text  # the 500s are counted like any other answer, and freed their slots
        assert 'lmforge_requests_total{method="POST",route="/v1/classify",status="500"} 2.0' in metrics
        assert "lmforge_in_flight_requests 0.0" in metrics
