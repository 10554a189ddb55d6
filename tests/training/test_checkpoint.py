"""Checkpoint files: what the COMPLETE marker records, when it is written, and how resume treats damaged checkpoints.

Torn or partial checkpoints (a file missing or of another size, a marker that does not parse) are skipped with a
warning; a file with its recorded size but other bytes, or one that verifies and still does not load safely, is
refused with a CheckpointError. A real model and optimizer (tiny) go through every path; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zlib
from pathlib import Path

import pytest
import torch

from lmforge.errors import CheckpointError
from lmforge.training import checkpoint as ckpt


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def run(tmp_path) -> tuple[Path, dict[int, dict[str, torch.Tensor]]]:
    """Checkpoints at steps 1, 2, 3 of a tiny model; returns the folder and the weights saved at each step."""
    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    folder = tmp_path / "checkpoints"
    saved = {}
    for step in (1, 2, 3):
        _train_step(model, optimizer)
        ckpt.save_checkpoint(folder, step, model, optimizer, {"epoch": 0, "position": step}, keep=3)
        saved[step] = _weights(model)
    return folder, saved


@pytest.fixture
def warnings_seen():
    """Warnings of the "lmforge" logger (the CLI may have turned its propagation off, so caplog cannot see them)."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("lmforge")
    handler, level = Collect(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.WARNING, logging.WARNING))
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def _resume(folder: Path) -> tuple[torch.nn.Module, tuple[dict, Path] | None]:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, ckpt.resume_point(folder, model, optimizer)


def _marker(path: Path) -> dict:
    return json.loads((path / ckpt.COMPLETE).read_text())


def _replace(path: Path, name: str, data: bytes, *, record_size: bool, record_crc: bool = False) -> None:
    """Put other bytes in a checkpoint file, updating what the marker records as asked."""
    (path / name).write_bytes(data)
    marker = _marker(path)
    if record_size:
        marker["files"][name]["size"] = len(data)
    if record_crc:
        marker["files"][name]["crc32"] = f"{zlib.crc32(data):08x}"
    (path / ckpt.COMPLETE).write_text(json.dumps(marker))


# ------------------------------------------------------------------------------------------------ writing
def test_marker_records_size_and_crc_of_every_file(run):
    folder, _ = run
    assert [step for step, _ in ckpt.complete_checkpoints(folder)] == [1, 2, 3]
    assert sorted(p.name for p in folder.iterdir()) == ["step-000001", "step-000002", "step-000003"]  # no temp
    path = folder / "step-000003"
    assert {p.name for p in path.iterdir()} == {ckpt.COMPLETE, *ckpt.FILES}
    marker = _marker(path)
    assert marker["format"] == 1 and marker["step"] == 3
    for name in ckpt.FILES:
        data = (path / name).read_bytes()
        assert marker["files"][name] == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors through /proc")
def test_files_are_durable_before_the_marker_that_vouches_for_them(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    final = folder / "step-000007"
    real_fsync = os.fsync
    synced: list[tuple[str, bool, bool]] = []  # (what, a COMPLETE marker existed, the final folder existed)

    def spy(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        what = target.name if target.parent.parent == folder or target.parent == folder else str(target)
        marker_exists = any((p / ckpt.COMPLETE).exists() for p in folder.iterdir()) if folder.is_dir() else False
        synced.append((what, marker_exists, final.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters())
    _train_step(model, optimizer)
    ckpt.save_checkpoint(folder, 7, model, optimizer, {"epoch": 0, "position": 7}, keep=2)
    monkeypatch.undo()

    names = [what for what, _, _ in synced]
    for name in ckpt.FILES:  # each data file flushed while no marker existed yet
        assert (name, False, False) in synced
    marker_at = names.index(ckpt.COMPLETE)
    assert all(names.index(name) < marker_at for name in ckpt.FILES)
    temp_dir_at = next(i for i, (what, _, _) in enumerate(synced) if what.startswith(".tmp-step-000007"))
    assert marker_at < temp_dir_at and not synced[temp_dir_at][2]  # folder entries durable before the rename
    assert synced[-1] == (str(folder), True, True)  # and the rename itself afterwards
    assert ckpt.resume_point(folder, _model(), torch.optim.AdamW(_model().parameters())) is not None


def test_saving_a_step_again_replaces_it(run):
    folder, _ = run
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters())
    _train_step(model, optimizer)
    ckpt.save_checkpoint(folder, 3, model, optimizer, {"epoch": 0, "position": 3}, keep=3)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    restored, (state, _) = _resume(folder)
    assert state["step"] == 3 and _same(_weights(restored), _weights(model))


# ------------------------------------------------------------------------------------------------ resuming
def test_resume_point_restores_the_newest_checkpoint(run, warnings_seen):
    folder, saved = run
    model, (state, path) = _resume(folder)
    assert path == folder / "step-000003" and state["step"] == 3 and state["position"] == 3
    assert "rng" not in state
    assert _same(_weights(model), saved[3])
    assert warnings_seen == []


@pytest.mark.parametrize("damage", ["truncated weights", "truncated optimizer", "invalid trainer_state.json",
                                    "missing rng file", "torn marker"])
def test_a_torn_newest_checkpoint_falls_back_to_the_previous_one(run, warnings_seen, damage):
    folder, saved = run
    newest = folder / "step-000003"
    if damage == "truncated weights":
        blob = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(blob[: len(blob) // 2])
        named = "model.safetensors"
    elif damage == "truncated optimizer":
        blob = (newest / "optimizer.pt").read_bytes()
        (newest / "optimizer.pt").write_bytes(blob[:100])
        named = "optimizer.pt"
    elif damage == "invalid trainer_state.json":
        (newest / "trainer_state.json").write_text('{"step": 3, "epo')
        named = "trainer_state.json"
    elif damage == "missing rng file":
        (newest / "rng.safetensors").unlink()
        named = "rng.safetensors"
    else:
        (newest / ckpt.COMPLETE).write_text('{"format": 1, "files": {"model.safe')
        named = ckpt.COMPLETE
    model, (state, path) = _resume(folder)
    assert state["step"] == 2 and path == folder / "step-000002"
    assert _same(_weights(model), saved[2])
    assert len(warnings_seen) == 1 and str(newest) in warnings_seen[0] and named in warnings_seen[0]


def test_when_no_checkpoint_verifies_resume_point_is_none_and_the_model_untouched(run, warnings_seen):
    folder, _ = run
    for _, path in ckpt.complete_checkpoints(folder):
        blob = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(blob[:-7])
    torch.manual_seed(1)
    model = _model()
    before = _weights(model)
    assert ckpt.resume_point(folder, model, torch.optim.AdamW(model.parameters())) is None
    assert _same(_weights(model), before)
    assert len(warnings_seen) == 3


class _Touch:
    """Unpickling this creates a folder: proof of whether anything was unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.makedirs, (str(self.target),)


@pytest.mark.parametrize("how", ["pickle, size recorded", "pickle, size and crc recorded", "garbage, same size"])
def test_a_poisoned_optimizer_file_is_refused_and_never_unpickled(run, tmp_path, warnings_seen, how):
    folder, _ = run
    newest = folder / "step-000003"
    proof = tmp_path / "unpickled"
    if how == "garbage, same size":
        _replace(newest, "optimizer.pt", os.urandom((newest / "optimizer.pt").stat().st_size), record_size=False)
    else:
        _replace(newest, "optimizer.pt", pickle.dumps(_Touch(proof)), record_size=True,
                 record_crc=how == "pickle, size and crc recorded")
    model = _model()
    before = _weights(model)
    with pytest.raises(CheckpointError) as refused:
        ckpt.resume_point(folder, model, torch.optim.AdamW(model.parameters()))
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert refused.value.where == str(newest / "optimizer.pt") and "step-000003" in message
    assert "--overwrite" in refused.value.fix and str(newest) in refused.value.fix
    assert ("weights_only" if how == "pickle, size and crc recorded" else "recorded content") in message
    assert not proof.exists()
    assert _same(_weights(model), before)  # refused before anything was applied
    assert warnings_seen == []  # refused, not silently skipped


def test_same_size_other_bytes_in_the_weights_are_refused(run):
    folder, _ = run
    newest = folder / "step-000003"
    blob = bytearray((newest / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit pattern in a weight: it would load silently without the checksum
    (newest / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="recorded content"):
        _resume(folder)


def test_a_checkpoint_of_another_model_is_refused_with_the_settings_fix(run):
    folder, _ = run
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with pytest.raises(CheckpointError) as refused:
        ckpt.resume_point(folder, model, torch.optim.AdamW(model.parameters()))
    assert "model.safetensors does not fit this model" in str(refused.value)
    assert "lmforge.yaml" in refused.value.fix


# ------------------------------------------------------------------------------------------------ old markers
def _make_legacy(folder: Path) -> None:
    for _, path in ckpt.complete_checkpoints(folder):
        (path / ckpt.COMPLETE).write_text("ok\n", encoding="utf-8")


def test_a_legacy_ok_marker_still_loads(run, warnings_seen):
    folder, saved = run
    _make_legacy(folder)
    model, (state, _) = _resume(folder)
    assert state["step"] == 3 and _same(_weights(model), saved[3])
    assert warnings_seen == []


def test_a_legacy_checkpoint_that_fails_to_load_falls_back(run, warnings_seen):
    folder, saved = run
    _make_legacy(folder)
    newest = folder / "step-000003"
    blob = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(blob[:-3])
    model, (state, _) = _resume(folder)
    assert state["step"] == 2 and _same(_weights(model), saved[2])
    assert "model.safetensors" in warnings_seen[0] and str(newest) in warnings_seen[0]


def test_a_legacy_checkpoint_with_a_pickled_optimizer_is_refused(run, tmp_path):
    folder, _ = run
    _make_legacy(folder)
    proof = tmp_path / "unpickled"
    (folder / "step-000003" / "optimizer.pt").write_bytes(pickle.dumps(_Touch(proof)))
    with pytest.raises(CheckpointError, match="weights_only"):
        _resume(folder)
    assert not proof.exists()


# ------------------------------------------------------------------------------------------------ the old API
def test_load_checkpoint_raises_a_checkpoint_error_rather_than_a_traceback(run):
    folder, _ = run
    newest = folder / "step-000003"
    (newest / "trainer_state.json").write_text("{")
    model = _model()
    with pytest.raises(CheckpointError) as refused:
        ckpt.load_checkpoint(newest, model, torch.optim.AdamW(model.parameters()))
    assert refused.value.where == str(newest / "trainer_state.json")
    assert ckpt.latest_checkpoint(folder) == newest  # unverified: the cheap listing the old loop used


def test_saving_after_a_fallback_drops_the_abandoned_newer_checkpoints(run):
    """Resume fell back past damaged steps 2 and 3; the next save must not let keep= prune the good one instead."""
    folder, _ = run
    for step in (2, 3):
        (folder / ckpt.checkpoint_name(step) / "optimizer.pt").write_bytes(b"")
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters())
    state, _ = ckpt.resume_point(folder, model, optimizer)
    assert state["step"] == 1
    _train_step(model, optimizer)
    ckpt.save_checkpoint(folder, 2, model, optimizer, {"epoch": 0, "position": 2}, keep=1)
    assert [step for step, _ in ckpt.complete_checkpoints(folder)] == [2]
    restored, (state, _) = _resume(folder)
    assert state["step"] == 2 and _same(_weights(restored), _weights(model))
