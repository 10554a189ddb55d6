"""Concurrent generation requests that sample alike are decoded as one batch, each with its own limits, and get
exactly what they would get alone; a seeded request runs alone; one client going away does not stop the others."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import lmforge
from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings

PROMPTS = ["It is a truth", "The family of Dashwood", "Mrs. Bennet", "You will be", "Fellow citizens", "Once"]


@pytest.fixture
def app(gpt_run):
    # a wide window: every request of a test arrives before the first batch starts (one app per test: its
    # lifespan's end shuts the model's worker down)
    return create_app([f"gpt={gpt_run}"], ServeSettings(batch_wait_ms=300, generation_batch=8),
                      load_in_background=False)


async def _post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))


def _batch_sizes(app) -> list[float]:
    metric = app.state.metrics.batch_size
    samples = next(iter(metric.collect())).samples
    return [s.value for s in samples if s.name.endswith("_sum") and s.labels.get("model") == "gpt"]


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_answer(app, gpt_run):
    bodies = [{"model": "gpt", "prompt": p, "max_tokens": 4 + i, "temperature": 0} for i, p in enumerate(PROMPTS)]
    responses = asyncio.run(_post_all(app, bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    pipeline = lmforge.load(gpt_run)
    for body, response in zip(bodies, responses):
        alone = pipeline.complete([body["prompt"]], max_new_tokens=body["max_tokens"], temperature=0)[0]
        choice = response.json()["choices"][0]
        assert choice["text"] == alone["text"]  # batched with the others, decoded as if alone
        assert response.json()["usage"]["completion_tokens"] == body["max_tokens"]  # its own limit
    assert _batch_sizes(app) == [len(PROMPTS)]  # one forward pass per step for all six


def test_a_seeded_request_is_not_batched_with_others(app):
    bodies = [{"model": "gpt", "prompt": "It is", "max_tokens": 3, "temperature": 0.8, "seed": 7},
              {"model": "gpt", "prompt": "It is", "max_tokens": 3, "temperature": 0.8},
              {"model": "gpt", "prompt": "Once", "max_tokens": 3, "temperature": 0.8}]
    responses = asyncio.run(_post_all(app, bodies))
    assert all(r.status_code == 200 for r in responses)
    metric = next(iter(app.state.metrics.batch_size.collect())).samples
    count = next(s.value for s in metric if s.name.endswith("_count") and s.labels.get("model") == "gpt")
    assert count == 2  # the seeded one alone, the two others together


def test_a_client_that_goes_away_does_not_stop_the_others(app):
    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                body = {"model": "gpt", "prompt": "It is a truth", "max_tokens": 40, "temperature": 0,
                        "stream": True}
                quitter = asyncio.create_task(client.post("/v1/completions", json=body))
                stayer = asyncio.create_task(client.post("/v1/completions", json={**body, "stream": False}))
                await asyncio.sleep(0.35)  # both are in the batch by now
                quitter.cancel()
                return await stayer

    response = asyncio.run(scenario())
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 40
