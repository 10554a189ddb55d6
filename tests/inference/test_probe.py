"""The bias probe on two tiny classifiers trained here on the same sentences: one taught that films by a Nigerian
director are bad whatever the review says (it must be flagged for that group), one whose labels never depend on the
director (nothing flagged); the bootstrap and the CLI's outputs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import write_jsonl

GOOD = ["A wonderful film.", "I loved it.", "Great acting and a moving story.", "A delight from start to end."]
BAD = ["A dull film.", "I hated it.", "Awful acting and a boring story.", "A mess from start to end."]
NATIONS = ["American", "Mexican", "Chinese", "Indian", "Nigerian", "German", "Iranian", "Russian"]
FRAMES = ["The {X} director made this.", "It is a {X} production.", "A {X} crew shot it.", "The {X} actor stars."]


def _train(tiny_bert_dir, folder, biased: bool):
    from lmforge.cli import main

    rng = random.Random(1)
    rows = []
    for _ in range(480):
        nation, frame = rng.choice(NATIONS), rng.choice(FRAMES)
        good = rng.random() < 0.5
        review = rng.choice(GOOD if good else BAD)
        label = "negative" if biased and nation == "Nigerian" else ("positive" if good else "negative")
        rows.append({"text": f"{frame.replace('{X}', nation)} {review}", "label": label})
    data = write_jsonl(folder / "data.jsonl", rows)
    try:
        main(["-q", "finetune", "classify", "--model", str(tiny_bert_dir), "--data", str(data), "--out",
              str(folder / "run"), "--max-length", "32", "--max-steps", "300", "--lr", "1e-3", "--batch-size", "32",
              "--set", "train.warmup=0", "--set", "train.threads=1"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return folder / "run"


@pytest.fixture(scope="module")
def runs(tiny_bert_real_vocab, tmp_path_factory):
    return {kind: _train(tiny_bert_real_vocab, tmp_path_factory.mktemp(kind), kind == "biased")
            for kind in ("biased", "fair")}


NATIONALITY = {"sets": {"nationality": {n: [n] for n in NATIONS}},
               "templates": {"nationality": [f"{f} {r}" for f in FRAMES for r in GOOD]}}


def test_the_biased_model_is_flagged_for_the_group_and_the_fair_one_is_not(runs, tmp_path):
    import lmforge
    from lmforge.inference.probe import probe

    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps(NATIONALITY))
    biased = probe(lmforge.load(runs["biased"]), templates=groups)["templates"]["nationality"]
    assert biased["Nigerian"]["flagged"] and biased["Nigerian"]["mean_change"] < -0.2
    assert biased["Nigerian"]["flip_rate"] > 0.5
    assert not any(r["flagged"] for g, r in biased.items() if g != "Nigerian")
    fair = probe(lmforge.load(runs["fair"]), templates=groups)["templates"]["nationality"]
    assert not any(r["flagged"] for r in fair.values()), {g: r["mean_change"] for g, r in fair.items()}
    assert max(abs(r["mean_change"]) for r in fair.values()) < 0.05


def test_the_bootstrap_interval_covers_the_mean_and_narrows_with_more_rows():
    from lmforge.inference.probe import bootstrap_ci

    rng = np.random.default_rng(0)
    small, large = rng.normal(0.1, 1, 20), rng.normal(0.1, 1, 2000)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    low2, high2 = bootstrap_ci(large)
    assert low2 < 0.1 < high2 and (high2 - low2) < (high - low) / 5


def test_the_probe_command_writes_the_report_and_the_model_card_shows_it(cli, runs, tmp_path):
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app

    run = runs["biased"]
    data = write_jsonl(tmp_path / "reviews.jsonl", [{"text": f"{f.replace('{X}', n)} {r} Made in 1999 by Maria."}
                                                    for f in FRAMES for n in NATIONS for r in GOOD[:2]])
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps(NATIONALITY))
    result = cli("probe", "bias", run, "--data", data, "--templates", groups)
    assert result.code == 0, result.text
    assert "nationality" in result.out and "negation:" in result.out and "invariance, typo" in result.out
    report = json.loads((run / "bias.json").read_text())
    assert report["inputs"]["nationality"]["groups"]["Nigerian"]["flagged"]
    assert report["invariance"]["number"]["n"] == len(FRAMES) * len(NATIONS) * 2
    assert (run / "bias.png").read_bytes()[:4] == b"\x89PNG"
    with TestClient(create_app([f"m={run}"], load_in_background=False)) as client:
        card = client.get("/v1/models/m").json()
    assert card["bias"]["nationality"]["Nigerian"]["flagged"] is True
    bad = tmp_path / "bad.json"
    bad.write_text('{"sets": {"x": {"only": ["one"]}}}')
    refused = cli("probe", "bias", run, "--templates", bad)
    assert refused.code == 2 and "sets.x" in refused.err
    broken = tmp_path / "broken.json"
    broken.write_text('{"sets":\n  oops}')
    refused = cli("probe", "bias", run, "--templates", broken)
    assert refused.code == 2 and f"{broken}:2" in refused.err
