"""The OpenAI-compatible API through the official `openai` client against a real server on loopback."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.serve.live import LiveServer


@pytest.fixture(scope="module")
def server(chat_run, gpt_run):
    with LiveServer(f"chat={chat_run}", f"gpt={gpt_run}", "--api-key", "sk-test") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)


def test_models_list(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {"chat", "gpt"}


def test_chat_completion(client):
    response = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "What is AI?"}],
                                              max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1  # exactly one finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    whole = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=10, temperature=0)
    assert text == whole.choices[0].message.content


def test_completions_stop_n_and_seed(client):
    base = client.completions.create(model="gpt", prompt="It is a truth", max_tokens=16, temperature=0)
    text = base.choices[0].text
    assert base.object == "text_completion" and base.choices[0].finish_reason == "length"
    stop = text[5:8]
    stopped = client.completions.create(model="gpt", prompt="It is a truth", max_tokens=16, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == text[: text.index(stop)]
    a = client.completions.create(model="gpt", prompt="The", max_tokens=12, temperature=1.0, seed=11, n=2)
    b = client.completions.create(model="gpt", prompt="The", max_tokens=12, temperature=1.0, seed=11, n=2)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and [c.index for c in a.choices] == [0, 1]
    streamed = client.completions.create(model="gpt", prompt="It is a truth", max_tokens=16, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_errors_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404 and "does not exist" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="gpt", prompt="word " * 1100, max_tokens=10)
    assert "at most 1024" in long.value.message or "context length" in long.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model="gpt", prompt="hi", max_tokens=100_000)
    assert too_many.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client.completions.create(model="gpt", prompt="hi", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="completions need a generative model|chat template"):
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    raw = httpx.post(server.url + "/v1/completions", json={"model": "gpt"}, headers={"Authorization": "Bearer sk-test"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def _metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(client, server):
    before = _metric(server, 'lmforge_generated_tokens_total{model="gpt"}')
    stream = client.completions.create(model="gpt", prompt="The", max_tokens=500, temperature=1.0, stream=True)
    next(iter(stream))
    stream.close()  # hang up after the first chunk
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _metric(server, "lmforge_in_flight_requests") > 0:
        time.sleep(0.05)
    assert _metric(server, "lmforge_in_flight_requests") == 0
    time.sleep(0.5)
    generated = _metric(server, 'lmforge_generated_tokens_total{model="gpt"}') - before
    assert generated < 500  # generation stopped early instead of running to max_tokens
    # and the model is free for the next caller
    assert client.completions.create(model="gpt", prompt="The", max_tokens=3).choices[0].text is not None


def test_concurrent_streams_all_complete(client):
    results = []

    def call():
        stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=8, stream=True, temperature=0)
        results.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    threads = [threading.Thread(target=call) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert len(results) == 4 and len(set(results)) == 1
