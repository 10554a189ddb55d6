"""Every preset in configs/ opens with the command that runs it and validates against its stage's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import build_config
from lmforge.stages import pretrain_task
from lmforge.tasks import registry

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _schema(command: str):
    """The config class a command line builds (the registry's, as the CLI does)."""
    stage, _, name = command.partition(" ")
    if stage == "pretrain":
        return lambda merged: pretrain_task(merged.get("objective")).config
    return registry.get(name).config


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_opens_with_its_command_and_validates(preset):
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# lmforge ") and f"--config configs/{preset.name}" in first
    command = first[len("# lmforge "):].split(" --config")[0]
    config = build_config(_schema(command), file=preset)
    assert str(config.out).startswith("runs/")


def test_there_are_presets():
    assert len(PRESETS) >= 5
