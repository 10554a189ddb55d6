"""Configs: precedence, durations, and errors that name file:line, flag or --set."""

from __future__ import annotations

import pytest

from lmforge.config import build_config, parse_duration, to_commented_yaml
from lmforge.errors import ConfigError
from lmforge.tasks.classify import FinetuneClassifyConfig


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2.5m", 150), (42, 42)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_is_explained():
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten minutes")


def test_precedence_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: spam\nout: runs/a\ntrain:\n  lr: 1.0e-4\n  batch_size: 8\n")
    cfg = build_config(
        FinetuneClassifyConfig,
        file=path,
        flags={"train.batch_size": (16, "--batch-size"), "train.epochs": (None, "--epochs")},
        sets=["train.lr=3e-5"],
    )
    assert cfg.data == "spam" and cfg.train.batch_size == 16 and cfg.train.lr == 3e-5
    assert cfg.train.epochs == 3  # untouched default of the stage


def test_errors_point_at_file_line_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: spam\nout: runs/a\ntrain:\n  batch_size: 8\n  lrr: 0.1\n  warmup: -1\n")
    with pytest.raises(ConfigError) as err:
        build_config(FinetuneClassifyConfig, file=path, flags={"train.max_time": ("soon", "--max-time")})
    message = str(err.value)
    assert f"{path}:5: unknown key 'train.lrr' (did you mean 'train.lr'?)" in message
    assert f"{path}:6: train.warmup" in message
    assert "--max-time: train.max_time" in message and "not a duration" in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: spam\ntrain: [1, 2\nout: x\n")
    with pytest.raises(ConfigError) as err:
        build_config(FinetuneClassifyConfig, file=path)
    assert f"{path}:" in str(err.value) and "invalid YAML" in str(err.value)


def test_commented_yaml_round_trips():
    import yaml

    cfg = build_config(FinetuneClassifyConfig, flags={"data": ("spam", "--data"), "out": ("r", "--out")})
    text = to_commented_yaml(cfg)
    assert "# peak learning rate (AdamW)" in text
    again = FinetuneClassifyConfig.model_validate(yaml.safe_load(text))
    assert again == cfg
