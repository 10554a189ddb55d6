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
