"""`lmforge models list`: the embedded models, the presets and the runs, counted without loading weights, and the
same counts on the served model cards."""

from __future__ import annotations

import json
import shutil


def test_the_list_counts_what_loading_would_find(cli, gpt_run, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from lmforge.models import build_bert_pretraining, resolve_model_path

    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(gpt_run, runs / "gpt")
    (runs / "notes").mkdir()  # not a run: left out
    result = cli("models", "list", "--runs", runs, "--json")
    assert result.code == 0, result.text
    entries = {e["name"]: e for e in json.loads(result.out)}
    minilm = AutoModel.from_pretrained(resolve_model_path("minilm"))
    assert entries["minilm"]["parameters"] == sum(p.numel() for p in minilm.parameters())
    assert entries["minilm"]["family"] == "encoder" and entries["minilm"]["max_length"] == 512
    assert entries["smollm2"]["family"] == "decoder" and 130e6 < entries["smollm2"]["parameters"] < 140e6
    assert entries["smollm2"]["license"] == "Apache-2.0" and not entries["smollm2"]["base"]
    gemma3 = entries["gemma3"]  # its chunk packages' sizes, before the first use converts it (or after)
    assert gemma3["family"] == "decoder" and gemma3["base"] and "Gemma Terms of Use" in gemma3["license"]
    assert 230 < gemma3["size_mb"] < 260
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))  # 30,522 tokens: the count scales with it
    bert = build_bert_pretraining("mini", tok, 512)
    vocab_params = (len(tok) - 30000) * (bert.config.hidden_size + 1)  # embeddings + the MLM head's bias
    assert entries["bert:mini"]["parameters"] == sum(p.numel() for p in bert.parameters()) - vocab_params
    assert entries["t5:small"]["use"] == "pretrain --objective span-corruption --size small"
    run = entries[str(runs / "gpt")]
    gpt = AutoModelForCausalLM.from_pretrained(gpt_run / "model")
    assert run["kind"] == "run" and run["task"] == "clm" and run["family"] == "decoder"
    assert run["parameters"] == sum(p.numel() for p in gpt.parameters()) and run["max_length"] == gpt.config.n_positions
    assert str(runs / "notes") not in entries


def test_measuring_times_each_kind_here(cli, gpt_run, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(gpt_run, runs / "gpt")
    result = cli("models", "list", "minilm", str(runs / "gpt"), "--runs", runs, "--no-presets", "--measure",
                 "--seconds", "0.5", "--json")
    assert result.code == 0, result.text
    speeds = {e["name"]: e["speed"] for e in json.loads(result.out)}
    assert set(speeds) == {"minilm", str(runs / "gpt")}
    assert speeds["minilm"]["unit"] == "examples/s" and speeds[str(runs / "gpt")]["unit"] == "tokens/s"
    assert cli("models", "list", "nonesuch").code == 2
    shown = cli("models", "list", "--runs", runs, "--no-presets")
    assert shown.code == 0 and "minilm" in shown.out and "--model minilm" in shown.out
