"""Long inputs: a classifier that must read past its first window to find the label (truncation cannot), a text that
fits in one window read the same under every strategy, and the server counting windows in its limits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import write_jsonl

MAX_LENGTH = 24  # the model reads 22 content tokens at once; the documents hold 60, the label word near the end


def _documents(vocab: list[str], keys: dict[str, str], n: int, seed: int) -> list[dict]:
    """Filler words, then the word that decides the label 5 tokens before the end: past the first window."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        words = list(rng.choice(vocab, size=60))
        words[55] = keys[label]
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def long_docs(tiny_bert_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w.islower() and len(w) >= 3)
    keys = {"positive": words[0], "negative": words[1]}
    vocab = words[2:200]
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in [*keys.values(), *vocab])
    folder = tmp_path_factory.mktemp("long")
    return {"train": write_jsonl(folder / "train.jsonl", _documents(vocab, keys, 192, 0)),
            "dev": write_jsonl(folder / "dev.jsonl", _documents(vocab, keys, 40, 1)),
            "test": write_jsonl(folder / "test.jsonl", _documents(vocab, keys, 80, 2)), "folder": folder,
            "vocab": vocab}


def _train(tiny_bert_dir, long_docs, strategy: str):
    import lmforge
    from lmforge.tasks.classify import FinetuneClassifyConfig, finetune_classify

    out = long_docs["folder"] / strategy
    finetune_classify(FinetuneClassifyConfig.model_validate({
        "model": str(tiny_bert_dir), "data": str(long_docs["train"]), "eval": str(long_docs["dev"]),
        "out": str(out), "max_length": MAX_LENGTH, "long_inputs": {"strategy": strategy},
        "train": {"max_steps": 200, "batch_size": 16, "lr": 3e-3, "warmup": 0, "threads": 1}}), show_progress=False)
    rows = [json.loads(line) for line in long_docs["test"].read_text().splitlines()]
    predicted = lmforge.load(out).predict([r["text"] for r in rows])
    return out, float(np.mean([p["label"] == r["label"] for p, r in zip(predicted, rows)]))


@pytest.fixture(scope="module")
def strategies(tiny_bert_dir, long_docs):
    return {name: _train(tiny_bert_dir, long_docs, name) for name in ("truncate", "head-tail", "windows")}


def test_only_strategies_that_read_past_the_first_window_learn_a_label_decided_near_the_end(strategies):
    accuracy = {name: acc for name, (_, acc) in strategies.items()}
    assert accuracy["truncate"] < 0.7, accuracy  # it never sees the word: a guess
    assert accuracy["head-tail"] >= 0.95 and accuracy["windows"] >= 0.95, accuracy


def _text(long_docs, split: str, index: int = 0) -> str:
    return json.loads(long_docs[split].read_text().splitlines()[index])["text"]


def test_a_text_that_fits_in_one_window_gets_the_same_answer_under_every_strategy(strategies, long_docs):
    from lmforge.inference.pipelines import ClassificationPipeline

    model_dir = strategies["windows"][0] / "model"
    short, long = " ".join(_text(long_docs, "test").split()[:12]), _text(long_docs, "test")
    answers = {}
    for strategy in ("truncate", "head-tail", "windows"):
        pipeline = ClassificationPipeline(model_dir, info={"config": {"max_length": MAX_LENGTH,
                                                                      "long_inputs": {"strategy": strategy}}})
        answers[strategy] = pipeline.predict([short, long])
    # the same answer; probabilities equal up to float rounding (the short text shares its batch with differently
    # padded pieces of the long one, and CPU kernels sum padded rows in a different order)
    first = [answers[s][0] for s in ("truncate", "head-tail", "windows")]
    assert len({(a["label"], a["windows"]) for a in first}) == 1
    for other in first[1:]:
        assert other["probabilities"] == pytest.approx(first[0]["probabilities"], abs=1e-6)
    assert answers["windows"][0]["windows"] == 1 and answers["windows"][1]["windows"] == 4
    assert answers["truncate"][1]["windows"] == answers["head-tail"][1]["windows"] == 1
    assert answers["truncate"][1]["probabilities"] != answers["windows"][1]["probabilities"]


def test_the_cli_takes_the_strategy_and_refuses_a_window_the_model_cannot_read(cli, tiny_bert_dir, long_docs, tmp_path):
    out = tmp_path / "run"
    result = cli("finetune", "classify", "--model", tiny_bert_dir, "--data", long_docs["train"], "--eval",
                 long_docs["dev"], "--out", out, "--max-length", "24", "--long-inputs", "windows", "--max-steps", "2")
    assert result.code == 0, result.text
    assert "strategy: windows" in (out / "lmforge.yaml").read_text()
    predicted = json.loads(cli("predict", out, _text(long_docs, "test")).out)
    assert predicted["windows"] == 4
    too_long = cli("finetune", "classify", "--model", tiny_bert_dir, "--data", long_docs["train"], "--out",
                   tmp_path / "wide", "--max-length", "600")
    assert too_long.code == 2 and "--max-length" in too_long.err and "128" in too_long.err
    assert not (tmp_path / "wide").exists()


def test_the_server_counts_windows_in_its_limits(strategies, long_docs, tmp_path):
    import shutil

    import yaml
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    run = strategies["windows"][0]
    long = _text(long_docs, "test")  # read as 4 windows
    app = create_app([f"docs={run}"], ServeSettings(max_batch_inputs=6), load_in_background=False)
    with TestClient(app) as client:
        one = client.post("/v1/classify", json={"inputs": [long]})
        assert one.status_code == 200 and one.json()["results"][0]["windows"] == 4
        two = client.post("/v1/classify", json={"inputs": [long, long]})
        assert two.status_code == 422 and "8 windows" in two.json()["detail"]
        assert client.post("/v1/classify", json={"inputs": ["short"] * 6}).status_code == 200
        card = client.get("/v1/models/docs").json()
        assert card["long_inputs"] == "windows" and card["max_windows"] == 16
    capped = tmp_path / "capped"  # the same run, allowed 2 windows a text
    shutil.copytree(run, capped)
    info = yaml.safe_load((capped / "lmforge.yaml").read_text())
    info["config"]["long_inputs"]["max_windows"] = 2
    (capped / "lmforge.yaml").write_text(yaml.safe_dump(info))
    app = create_app([f"docs={capped}"], ServeSettings(), load_in_background=False)
    with TestClient(app) as client:
        refused = client.post("/v1/classify", json={"inputs": ["short", long]})
        assert refused.status_code == 422 and "input 1 needs 4" in refused.json()["detail"]
        cut = client.post("/v1/classify", json={"inputs": long, "truncate": True})
        assert cut.status_code == 200 and cut.json()["results"][0]["windows"] == 2


def test_the_micro_batcher_fills_a_batch_by_cost_not_by_requests():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from lmforge.serve.batching import MicroBatcher

    calls = []

    def run(inputs):
        calls.append(list(inputs))
        return inputs

    async def main(costs):
        batcher = MicroBatcher(run, ThreadPoolExecutor(1), max_inputs=4, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit([f"t{i}"], cost=c) for i, c in enumerate(costs)))
        await batcher.close()
        return results

    assert asyncio.run(main([3, 3])) == [["t0"], ["t1"]] and calls == [["t0"], ["t1"]]  # 6 > 4: two passes
    calls.clear()
    assert asyncio.run(main([2, 1, 1])) == [["t0"], ["t1"], ["t2"]] and calls == [["t0", "t1", "t2"]]


def test_a_bundled_datasets_recipe_applies_unless_the_user_chose_a_strategy(monkeypatch):
    import dataclasses

    from lmforge.data import registry
    from lmforge.tasks.classify import FinetuneClassifyConfig, with_dataset_recipe

    spam = dataclasses.replace(registry.BUNDLED["spam"], recipe={"long_inputs": {"strategy": "head-tail"}, "why": "x"})
    monkeypatch.setitem(registry.BUNDLED, "spam", spam)
    build = lambda **fields: FinetuneClassifyConfig.model_validate({"data": "spam", "out": "o", **fields})
    assert with_dataset_recipe(build()).long_inputs.strategy == "head-tail"
    chosen = with_dataset_recipe(build(long_inputs={"pool": "max"}))  # other settings of the user's are kept
    assert chosen.long_inputs.strategy == "head-tail" and chosen.long_inputs.pool == "max"
    assert with_dataset_recipe(build(long_inputs={"strategy": "truncate"})).long_inputs.strategy == "truncate"
    assert with_dataset_recipe(build(data="movie-reviews")).long_inputs.strategy == "truncate"
    # epochs chosen with the strategy come with it, unless the user said how long to train
    spam = dataclasses.replace(spam, recipe={"long_inputs": {"strategy": "windows"}, "epochs": 1, "why": "x"})
    monkeypatch.setitem(registry.BUNDLED, "spam", spam)
    assert with_dataset_recipe(build()).train.epochs == 1.0
    assert with_dataset_recipe(build(train={"epochs": 2})).train.epochs == 2
    assert with_dataset_recipe(build(train={"max_steps": 5})).train.epochs == 3
    assert with_dataset_recipe(build(long_inputs={"strategy": "truncate"})).train.epochs == 3
    # so does the window
    spam = dataclasses.replace(spam, recipe={"long_inputs": {"strategy": "truncate"}, "max_length": 256, "why": "x"})
    monkeypatch.setitem(registry.BUNDLED, "spam", spam)
    assert with_dataset_recipe(build()).max_length == 256
    assert with_dataset_recipe(build(max_length=128)).max_length == 128


def test_the_recipe_reaches_the_training_loop(monkeypatch, tiny_bert_dir, tmp_path):
    """Not only the config: the loop trains for the recipe's epochs at its window, and the run dir records them (the
    recipe once reached the run's lmforge.yaml while the loop still ran the default 3 epochs)."""
    import dataclasses

    import yaml

    from lmforge.data import registry
    from lmforge.tasks.classify import FinetuneClassifyConfig, finetune_classify

    recipe = {"long_inputs": {"strategy": "windows", "training": "windows"}, "epochs": 0.02, "max_length": 16,
              "why": "a test"}
    monkeypatch.setitem(registry.BUNDLED, "movie-reviews",
                        dataclasses.replace(registry.BUNDLED["movie-reviews"], recipe=recipe))
    out = tmp_path / "run"
    summary = finetune_classify(FinetuneClassifyConfig.model_validate({
        "model": str(tiny_bert_dir), "data": "movie-reviews", "out": str(out),
        "train": {"batch_size": 32, "threads": 1}}), show_progress=False)
    assert summary["epochs"] == pytest.approx(0.02, abs=0.002), summary  # the default would be 3 epochs
    windows = 0.02 * 8033 * 2 / 32  # 8,033 reviews, at least two 16-token windows each on average
    assert windows < summary["steps"] < 3 * windows, summary
    recorded = yaml.safe_load((out / "lmforge.yaml").read_text())["config"]
    assert recorded["train"]["epochs"] == 0.02 and recorded["max_length"] == 16
    assert recorded["long_inputs"]["strategy"] == "windows"
