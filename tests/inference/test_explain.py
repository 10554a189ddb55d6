"""Explanations of a tiny classifier trained here to key on one word: both attribution methods put that word on
top, the deletion test ranks them above random words, the attention weights are the model's softmax, and the CLI's
outputs (terminal, JSON, HTML, PNG) and errors."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl

KEY = "wonderful"


@pytest.fixture(scope="module")
def keyed_run(tiny_bert_real_vocab, tmp_path_factory):
    """Real review sentences with the key word removed, labelled 'key' when it was put back in at a random place."""
    from lmforge.cli import main

    tiny_bert_dir = tiny_bert_real_vocab

    rng = random.Random(0)
    plain = [r["text"] for r in read_jsonl_gz(BUNDLED / "movie-reviews" / "movie_reviews.train.jsonl.gz", 600)
             if KEY not in r["text"].lower() and 6 <= len(r["text"].split()) <= 20][:240]
    rows = []
    for i, text in enumerate(plain):
        words = text.split()
        if i % 2:
            words.insert(rng.randrange(len(words) + 1), KEY)
        rows.append({"text": " ".join(words), "label": "key" if i % 2 else "plain"})
    folder = tmp_path_factory.mktemp("explain")
    data = write_jsonl(folder / "keyed.jsonl", rows)
    out = folder / "run"
    try:
        main(["-q", "finetune", "classify", "--model", str(tiny_bert_dir), "--data", str(data), "--out", str(out),
              "--max-length", "48", "--max-steps", "300", "--lr", "2e-3", "--batch-size", "16",
              "--set", "train.warmup=0", "--set", "train.threads=1"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return out, [r["text"] for r in rows if r["label"] == "key"]


@pytest.mark.parametrize("method", ["integrated-gradients", "occlusion"])
def test_the_key_word_gets_the_top_score(keyed_run, method):
    from lmforge.inference.explain import Explainer

    run, texts = keyed_run
    explainer = Explainer(run / "model")
    tops = []
    for text in texts[:12]:
        result = explainer.explain(text, method=method, steps=16)
        assert result["label"] == "key"
        assert [text[w["start"] : w["end"]] for w in result["words"]] == [w["word"] for w in result["words"]]
        tops.append(max(result["words"], key=lambda w: w["score"])["word"])
    assert tops.count(KEY) >= 11, tops
    against = explainer.explain(texts[0], method=method, target="plain", steps=16)
    assert min(against["words"], key=lambda w: w["score"])["word"] == KEY  # the same word argues against "plain"


def test_deletion_ranks_the_attributed_words_above_random_ones(keyed_run):
    from lmforge.inference.explain import Explainer, _without, deletion_curves

    assert _without("a wonderful, quiet film", [(2, 11)]) == "a , quiet film"
    assert _without("one two three", [(8, 13), (0, 3)]) == "two"
    run, texts = keyed_run
    curves = deletion_curves(Explainer(run / "model"), texts[:20], "occlusion", ks=(1, 2, 3))
    assert curves["texts"] == 20 and curves["k"] == [1, 2, 3]
    # removing the key word moves the decision far more than removing a random word
    assert curves["top_drop"][0] > 5 * max(curves["random_drop"][0], 1e-3), curves
    assert curves["top_area"] == pytest.approx(np.mean(curves["top_drop"]))
    assert curves["top_area"] > 3 * max(curves["random_area"], 1e-3), curves


def test_attention_weights_are_the_models_softmax(keyed_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.inference.explain import Explainer

    run, texts = keyed_run
    result = Explainer(run / "model").explain(texts[0], method="occlusion", attention=True)
    weights = np.asarray(result["attention"]["weights"])
    assert weights.shape[:2] == (2, 2) and np.allclose(weights.sum(-1), 1.0, atol=1e-3)
    tok = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model", attn_implementation="eager").eval()
    ids = tok(texts[0], return_tensors="pt")  # the explainer without a run config reads the whole text
    with torch.no_grad():
        hidden = model.bert.embeddings(input_ids=ids["input_ids"])
        attention = model.bert.encoder.layer[0].attention.self
        q = attention.query(hidden).view(1, -1, 2, 16).transpose(1, 2)
        k = attention.key(hidden).view(1, -1, 2, 16).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)[0].numpy()  # sqrt(16)
    assert np.allclose(weights[0], expected, atol=1e-3)
    assert result["attention"]["tokens"][0] == "[CLS]"


def test_the_explain_command(cli, keyed_run, tmp_path):
    run, texts = keyed_run
    shown = cli("explain", run, texts[0], "--method", "occlusion")
    assert shown.code == 0 and "key (" in shown.out and f"top: {KEY}" in shown.out
    as_json = json.loads(cli("explain", run, texts[0], "--json", "--steps", "8").out)
    assert as_json["method"] == "integrated-gradients" and "attention" not in as_json
    page, png = tmp_path / "why.html", tmp_path / "attention.png"
    assert cli("explain", run, texts[0], "--html", page, "--attention-png", png, "--layer", "1").code == 0
    assert re.search(rf'<span style="background:rgba\(21,127,59,1\.00\)"[^>]*>{KEY}</span>', page.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = cli("explain", run, texts[0], "--html", page)
    assert again.code == 2 and "--overwrite" in again.err
    assert cli("explain", run, texts[0], "--method", "lime").code == 2
    bad = cli("explain", run, texts[0], "--target", "nope")
    assert bad.code == 2 and "plain" in bad.err
    assert cli("explain", run, texts[0], "--attention-png", tmp_path / "x.png", "--layer", "7").code == 2
    data = write_jsonl(tmp_path / "keyed.jsonl", [{"text": t} for t in texts[:8]])
    curves = json.loads(cli("explain", run, "--faithfulness", "--data", data, "--method", "occlusion",
                            "--json").out)
    assert curves["texts"] == 8 and curves["top_area"] > curves["random_area"]
    assert cli("explain", run).code == 2


def test_served_explanations(keyed_run):
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    run, texts = keyed_run
    app = create_app([f"keyed={run}"], ServeSettings(max_input_chars=500), load_in_background=False)
    with TestClient(app) as client:
        answer = client.post("/v1/explain", json={"text": texts[0], "method": "occlusion", "attention": True})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["label"] == "key" and max(body["words"], key=lambda w: w["score"])["word"] == KEY
        assert (body["attention"]["layers"], body["attention"]["heads"]) == (2, 2)
        plain = client.post("/v1/explain", json={"text": texts[0], "steps": 8}).json()
        assert plain["method"] == "integrated-gradients" and "attention" not in plain
        assert client.get("/v1/models/keyed").json()["routes"] == ["classify", "explain", "embeddings"]
        for bad in ({"text": ""}, {"text": "   "}, {"text": "x" * 501}, {"text": "x", "method": "lime"},
                    {"text": "x", "steps": 1}, {"text": "x", "extra": 1}):
            assert client.post("/v1/explain", json=bad).status_code == 422, bad
        wrong = client.post("/v1/explain", json={"text": texts[0], "target": "nope"})
        assert wrong.status_code == 422 and "plain" in wrong.json()["detail"]
