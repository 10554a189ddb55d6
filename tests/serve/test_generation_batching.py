"""Concurrent generation requests are decoded together, each with its own limits, and get exactly what they would
get alone: with the continuous scheduler (the default) requests join and leave the running batch at every step, a
seeded one among them; with the static one, requests that sample alike share a batch and a seeded one runs alone.
One client going away does not stop the others."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import lmforge
from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings

PROMPTS = ["It is a truth", "The family of Dashwood", "Mrs. Bennet", "You will be", "Fellow citizens", "Once"]


@pytest.fixture(params=["continuous", "static"])
def app(gpt_run, request):
    # static: a wide window, so every request of a test arrives before the first batch starts (one app per test: its
    # lifespan's end shuts the model's worker down)
    return create_app([f"gpt={gpt_run}"], ServeSettings(batch_wait_ms=300, generation_batch=8,
                                                        scheduler=request.param), load_in_background=False)


@pytest.fixture
def static_app(gpt_run):
    return create_app([f"gpt={gpt_run}"], ServeSettings(batch_wait_ms=300, generation_batch=8, scheduler="static"),
                      load_in_background=False)


@pytest.fixture
def continuous_app(gpt_run):
    return create_app([f"gpt={gpt_run}"], ServeSettings(generation_batch=8), load_in_background=False)


async def _post_all(app, bodies: list[dict], *, together: bool = False) -> list[httpx.Response]:
    """Post ``bodies`` concurrently. ``together`` (continuous scheduler): the scheduler waits until every request
    has reached it, so none decodes steps alone because the event loop was slow to hand the next one over."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            posts = [asyncio.ensure_future(client.post("/v1/completions", json=b)) for b in bodies]
            generation = app.state.registry.models["gpt"].generation
            scheduler = getattr(generation, "scheduler", None)
            if together and scheduler is not None:
                with scheduler.gen.lock:  # the scheduler takes it for each step
                    while len(scheduler.waiting) + len(scheduler.active) < len(bodies):
                        await asyncio.sleep(0.01)
            return await asyncio.gather(*posts)


def _batches(app, stat: str) -> float:
    """The batch-size histogram's ``sum`` (rows decoded in all) or ``count`` (forward passes)."""
    samples = next(iter(app.state.metrics.batch_size.collect())).samples
    return sum(s.value for s in samples if s.name.endswith(f"_{stat}") and s.labels.get("model") == "gpt")


def test_concurrent_requests_are_decoded_together_and_each_gets_its_own_answer(app, gpt_run):
    bodies = [{"model": "gpt", "prompt": p, "max_tokens": 14 + i, "temperature": 0} for i, p in enumerate(PROMPTS)]
    responses = asyncio.run(_post_all(app, bodies, together=True))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    pipeline = lmforge.load(gpt_run)
    lengths = []
    for body, response in zip(bodies, responses):
        alone = pipeline.complete([body["prompt"]], max_new_tokens=body["max_tokens"], temperature=0)[0]
        choice = response.json()["choices"][0]
        assert choice["text"] == alone["text"]  # batched with the others, decoded as if alone
        lengths.append(response.json()["usage"]["completion_tokens"])
        assert lengths[-1] <= body["max_tokens"]  # its own limit
    if app.state.settings.scheduler == "static":
        assert _batches(app, "sum") == len(PROMPTS) and _batches(app, "count") == 1  # one batch for all six
    else:  # every token after a prompt's first comes from a shared step: far fewer steps than tokens
        assert _batches(app, "sum") == sum(n - 1 for n in lengths)
        assert _batches(app, "count") < max(lengths) + len(PROMPTS)


def test_a_seeded_request_gives_the_same_text_alone_or_beside_others(continuous_app, gpt_run):
    seeded = {"model": "gpt", "prompt": "It is", "max_tokens": 12, "temperature": 0.8, "seed": 7}
    others = [{"model": "gpt", "prompt": "It is", "max_tokens": 12, "temperature": 1.2, "top_k": 5},
              {"model": "gpt", "prompt": "Once", "max_tokens": 12, "temperature": 0}]
    together = asyncio.run(_post_all(continuous_app, [others[0], seeded, others[1]]))
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    alone = lmforge.load(gpt_run).complete(["It is"], max_new_tokens=12, temperature=0.8, seed=7)[0]
    assert together[1].json()["choices"][0]["text"] == alone["text"]
    assert _batches(continuous_app, "count") < 3 * 11  # the three shared their steps


def test_the_static_scheduler_runs_a_seeded_request_alone(static_app):
    app = static_app
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
