"""``POST /v1/embeddings`` through the official `openai` client against a real server on loopback (the embedded minilm,
a classification run, a masked-LM BERT, and a decoder that gives no embeddings), plus an in-process app for the
micro-batching."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest

from lmforge.kb.embed import SentenceEmbedder
from lmforge.rundir import RunDir
from lmforge.serve.app import create_app
from lmforge.serve.settings import ServeSettings
from tests.serve.live import LiveServer

TEXTS = ["A gorgeous, moving film.", "The plot made no sense at all", "How do I open a file in Python?"]


@pytest.fixture(scope="module")
def server(classify_run, tiny_bert_dir, gpt_run):
    with LiveServer("minilm", f"sentiment={classify_run}", f"mlm={tiny_bert_dir}", f"gpt={gpt_run}",
                    "--api-key", "sk-test", "--max-batch-inputs", "4") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def minilm():
    return SentenceEmbedder("minilm")  # the knowledge bases' embedder (float32: the model's own vectors)


def _vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    assert all(d.object == "embedding" for d in response.data)
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_embeddings_equal_the_kbs_vectors_as_float_and_base64(client, minilm):
    expected = minilm.embed(TEXTS)
    # the client asks for base64 unless told otherwise, and decodes it to floats
    decoded = client.embeddings.create(model="minilm", input=TEXTS)
    plain = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    for response in (decoded, plain):
        vectors = _vectors(response)
        assert response.object == "list" and response.model == "minilm" and vectors.shape == (3, 384)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # unit length
    tokens = sum(len(ids) for ids in minilm.tokenize(TEXTS))
    assert plain.usage.prompt_tokens == plain.usage.total_tokens == tokens
    np.testing.assert_array_equal(_vectors(decoded), _vectors(plain))  # float32 both ways: the same numbers


def test_embeddings_base64_is_little_endian_float32(server, minilm):
    response = httpx.post(server.url + "/v1/embeddings", json={"model": "minilm", "input": TEXTS[0],
                                                               "encoding_format": "base64"},
                          headers={"Authorization": "Bearer sk-test"}, timeout=60)
    assert response.status_code == 200
    encoded = response.json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_allclose(vector, minilm.embed(TEXTS[:1])[0], atol=1e-5)


def test_embeddings_of_identical_texts_are_identical_and_a_batch_equals_its_singles(client):
    batch = _vectors(client.embeddings.create(model="minilm", input=[TEXTS[0], TEXTS[1], TEXTS[0]]))
    np.testing.assert_allclose(batch[0], batch[2], atol=1e-6)
    singles = np.stack([_vectors(client.embeddings.create(model="minilm", input=t))[0] for t in TEXTS[:2]])
    np.testing.assert_allclose(batch[:2], singles, atol=1e-5)
    assert float(batch[0] @ batch[1]) < 0.9  # different texts, different vectors


def test_encoder_runs_embed_with_the_encoder_under_their_head(client, classify_run, tiny_bert_dir):
    for name, folder in (("sentiment", RunDir(classify_run).model_dir), ("mlm", tiny_bert_dir)):
        vectors = _vectors(client.embeddings.create(model=name, input=TEXTS[:2], dimensions=32))
        np.testing.assert_allclose(vectors, SentenceEmbedder(folder).embed(TEXTS[:2]), atol=1e-5)


def test_the_model_list_says_which_models_embed(client):
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards["minilm"]["task"] == "embed" and cards["minilm"]["routes"] == ["embeddings"]
    assert cards["minilm"]["max_length"] == 256
    assert "embeddings" in cards["sentiment"]["routes"] and cards["mlm"]["routes"] == ["embeddings"]
    assert "embeddings" not in cards["gpt"]["routes"]


def _refused(call, status: int = 400) -> dict:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value
    body = caught.value.body  # the client hands over OpenAI's error object
    assert body["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    return body


def test_embeddings_refusals_are_400s_in_openais_shape(client):
    create = client.embeddings.create
    cases = [
        (lambda: create(model="minilm", input=""), "input", "input is empty"),
        (lambda: create(model="minilm", input=["fine", "  "]), "input", "input 1 is empty"),
        (lambda: create(model="minilm", input=[]), "input", "'input' is empty"),
        (lambda: create(model="minilm", input=[101, 7592, 102]), "input", "token-id input is not supported"),
        (lambda: create(model="minilm", input=[[101, 102]]), "input", "token-id input is not supported"),
        (lambda: create(model="minilm", input=["a"] * 5), "input", "5 inputs in one request; the limit is 4"),
        (lambda: create(model="minilm", input=["short", "word " * 300]), "input",
         "longer than the model's 256 tokens: input 1 has 302"),
        (lambda: create(model="minilm", input="hi", dimensions=128), "dimensions",
         "gives 384-dimensional vectors and cannot shorten them"),
        (lambda: create(model="gpt", input="hi"), "model", "gives no embeddings; models that do: minilm, sentiment, mlm"),
        (lambda: create(model="minilm", input="hi", extra_body={"pooling": "cls"}), "pooling", "unknown field"),
        (lambda: create(model="minilm", input="hi", encoding_format="int8"), "encoding_format", "invalid request"),
    ]
    for call, param, message in cases:
        body = _refused(call)
        assert body["param"] == param and message in body["message"], body
    missing = _refused(lambda: create(model="nope", input="hi"), 404)
    assert missing["code"] == "model_not_found" and "does not exist" in missing["message"]


def test_embeddings_truncate_extension_cuts_long_inputs(client, minilm):
    long = "word " * 300
    response = client.embeddings.create(model="minilm", input=[long], extra_body={"truncate": True})
    assert response.usage.prompt_tokens == 256  # the model's limit, its special tokens included
    np.testing.assert_allclose(_vectors(response)[0], minilm.embed([long])[0], atol=1e-5)


def test_concurrent_embedding_requests_share_forward_passes():
    app = create_app(["minilm"], ServeSettings(batch_wait_ms=50, batch_max_inputs=64), load_in_background=False)
    app.state.registry.load_all()
    pipeline = app.state.registry.models["minilm"].pipeline
    texts = [[f"review number {i} was {'great' if i % 2 else 'awful'}", f"second text {i}"] for i in range(8)]
    expected = [pipeline.embedder.embed(t) for t in texts]
    passes, embed_tokens = [], pipeline.embed_tokens
    pipeline.embed_tokens = lambda encoded, **kw: (passes.append(len(encoded)), embed_tokens(encoded, **kw))[1]

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return await asyncio.gather(*[c.post("/v1/embeddings", json={"model": "minilm", "input": t})
                                          for t in texts])

    responses = asyncio.run(scenario())
    for response, want in zip(responses, expected):
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)  # each request gets its own vectors back
    assert sum(passes) == 16 and len(passes) < 8  # every input once, in fewer forward passes than requests
