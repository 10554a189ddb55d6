"""Every preset in configs/ opens with the command that runs it and validates against its stage's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import (FinetuneChatConfig, FinetuneClassifyConfig, FinetuneCodeConfig, PretrainConfig,
                            build_config)

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
COMMANDS = {"finetune classify": FinetuneClassifyConfig, "finetune chat": FinetuneChatConfig,
            "finetune code": FinetuneCodeConfig, "pretrain": PretrainConfig}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_opens_with_its_command_and_validates(preset):
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# lmforge ") and f"--config configs/{preset.name}" in first
    command = first[len("# lmforge "):].split(" --config")[0]
    config = build_config(COMMANDS[command], file=preset)
    assert str(config.out).startswith("runs/")


def test_there_are_presets():
    assert len(PRESETS) >= 5
