"""`lmforge learning-curve`: nested, deterministic subsets; a small real curve with a random-init comparison; the
files it writes and its errors."""

from __future__ import annotations

import json
import math

import pytest


def test_subsets_are_nested_stratified_and_deterministic():
    from lmforge.curves import nested_subsets

    labels = ["a"] * 90 + ["b"] * 10
    first = nested_subsets(labels, [0.01, 0.1, 0.5, 1.0], seed=3)
    assert first == nested_subsets(labels, [1.0, 0.5, 0.1, 0.01], seed=3)  # the order asked in does not matter
    assert first != nested_subsets(labels, [0.01, 0.1, 0.5, 1.0], seed=4)
    sizes = [len(first[f]) for f in (0.01, 0.1, 0.5, 1.0)]
    assert sizes == [1 + 1, 9 + 1, 45 + 5, 100]  # ceil per class, at least one of each
    for small, large in ((0.01, 0.1), (0.1, 0.5), (0.5, 1.0)):
        assert set(first[small]) <= set(first[large])
    for f, rows in first.items():
        assert sum(labels[i] == "b" for i in rows) == max(1, math.ceil(f * 10))


def _tiny_curve(cli, tiny_bert_dir, out, *args):
    """A curve of the tiny BERT on wordnet-topics at a few steps a point, its curve.json printed."""
    return cli("learning-curve", "--model", tiny_bert_dir, "--data", "wordnet-topics", "--out", out, "--epochs", "0.1",
               "--max-length", "32", "--set", "threads=1", "--json", *args)


def test_a_small_curve_against_random_init(cli, tiny_bert_dir, tmp_path):
    out = tmp_path / "curve"
    result = _tiny_curve(cli, tiny_bert_dir, out, "--fractions", "0.002,0.004", "--compare", "random-init",
                         "--min-steps", "3")
    assert result.code == 0, result.text
    curve = json.loads(result.out)
    assert [(r["init"], r["fraction"]) for r in curve["table"]] == [
        ("pretrained", 0.002), ("pretrained", 0.004), ("random-init", 0.002), ("random-init", 0.004)]
    assert curve["table"][0]["labels"] < curve["table"][1]["labels"]
    assert {p["steps"] for p in curve["points"]} == {3}
    saved = json.loads((out / "curve.json").read_text())
    assert saved["table"] == curve["table"] and (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "random-init-seed0-0.002" / "eval.json").exists()
    again = cli("learning-curve", "--data", "wordnet-topics", "--out", out)
    assert again.code == 2 and "--overwrite" in again.err


def test_first_seed_runs_the_seeds_a_full_curve_would(cli, tiny_bert_dir, tmp_path):
    """--first-seed 1 --seeds 1 is the second seed of --seeds 2: its subset and its runs, so seeds can run apart."""
    from lmforge.curves import nested_subsets
    from lmforge.data.labeled import load_text_label

    out = tmp_path / "curve"
    result = _tiny_curve(cli, tiny_bert_dir, out, "--fractions", "0.002", "--first-seed", "1", "--min-steps", "2")
    assert result.code == 0, result.text
    assert [(p["seed"], p["init"]) for p in json.loads(result.out)["points"]] == [(1, "pretrained")]
    train = load_text_label("wordnet-topics")
    rows = nested_subsets(train.labels, [0.002], seed=1)[0.002]
    written = [json.loads(line)["text"] for line in (out / "data" / "seed1-0.002.jsonl").read_text().splitlines()]
    assert written == [train.texts[i] for i in rows]
    assert rows != nested_subsets(train.labels, [0.002], seed=0)[0.002]
    assert [p.name for p in (out / "runs").iterdir()] == ["pretrained-seed1-0.002"]


def _curve_dir(root, name, model, points):
    folder = root / name
    folder.mkdir()
    (folder / "curve.json").write_text(json.dumps({"model": model, "data": "movie-reviews", "seconds": 10.0,
                                                   "points": points}))
    return folder


def _point(init, seed, accuracy):
    return {"init": init, "seed": seed, "fraction": 0.1, "labels": 804, "steps": 100, "accuracy": accuracy,
            "macro_f1": accuracy - 0.1}


def test_merge_pools_seeds_run_apart_and_refuses_what_does_not_belong(cli, tmp_path):
    a = _curve_dir(tmp_path, "a", "minilm", [_point("pretrained", 0, 0.80), _point("random-init", 0, 0.50)])
    b = _curve_dir(tmp_path, "b", "minilm", [_point("pretrained", 1, 0.70), _point("random-init", 1, 0.60),
                                             _point("pretrained", 2, 0.75), _point("random-init", 2, 0.55)])
    result = cli("learning-curve", "--merge", a, "--merge", b, "--out", tmp_path / "ab", "--json")
    assert result.code == 0, result.text
    merged = json.loads(result.out)
    assert [(r["init"], r["seeds"]) for r in merged["table"]] == [("pretrained", 3), ("random-init", 3)]
    assert merged["table"][0]["accuracy"] == pytest.approx(0.75)
    assert merged["table"][0]["accuracy_std"] == pytest.approx((0.05 ** 2 * 2 / 3) ** 0.5)
    assert merged["table"][1]["macro_f1"] == pytest.approx(0.45) and merged["seconds"] == 20.0
    assert (tmp_path / "ab" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    again = cli("learning-curve", "--merge", a, "--merge", b, "--out", tmp_path / "ab")
    assert again.code == 2 and "--overwrite" in again.err
    other = _curve_dir(tmp_path, "other", "runs/bert-tiny", [_point("pretrained", 3, 0.3)])
    broken = _curve_dir(tmp_path, "broken", "minilm", [{"init": "pretrained", "accuracy": 0.9}])
    for dirs, fragment in [([a, a], "seed 0 of fraction 0.1 (pretrained) is in more than one"),
                           ([a, other], "bert-tiny on movie-reviews, not of minilm"),
                           ([a, broken], "is not a learning curve"),
                           ([a, tmp_path / "nothing"], "holds no curve.json")]:
        bad = cli("learning-curve", *[x for d in dirs for x in ("--merge", d)], "--out", tmp_path / "bad")
        assert bad.code == 2 and fragment in bad.err, bad.err
    into = cli("learning-curve", "--merge", a, "--merge", b, "--out", a)
    assert into.code == 2 and "one of the curves being merged" in into.err
    assert json.loads((a / "curve.json").read_text())["points"][0]["seed"] == 0  # the input is untouched


@pytest.mark.parametrize(("args", "fragment"), [
    (["--fractions", "0,0.5"], "(0, 1]"), (["--fractions", "a,b"], "not a list of numbers"),
    (["--compare", "scratch"], "unknown comparison"), (["--data", "movie-reviews:test"], "names a split"),
    (["--data", "corpus"], "no test split"), (["--data", None], "no dataset given")])
def test_bad_settings_exit_2(cli, tmp_path, args, fragment):
    base = {"--data": "movie-reviews", "--out": str(tmp_path / "c")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = cli("learning-curve", *[x for kv in base.items() if kv[1] is not None for x in kv])
    assert result.code == 2 and fragment in result.err
