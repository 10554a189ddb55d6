"""Atomic, resumable checkpoints.

A checkpoint is written to ``checkpoints/.tmp-step-N-<pid>``, completed with a ``COMPLETE`` marker and renamed to
``checkpoints/step-00000N``; a process killed half-way leaves only a temp folder, which resume ignores and removes.
Contents: model weights (safetensors), optimizer state (tensors only, loaded with ``weights_only=True``), RNG states,
and ``trainer_state.json`` (step, epoch, data position, elapsed time, schedule, best metric).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"
STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    json_part = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{index}"] = state
    return json_part, tensors


def set_rng_state(json_part: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = json_part["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    folder: Path, step: int, model: torch.nn.Module, optimizer: Any, state: dict, keep: int
) -> Path:
    from safetensors.torch import save_file, save_model

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    tmp = folder / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng_json, rng_tensors = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step, "rng": rng_json}), encoding="utf-8")
    (tmp / COMPLETE).write_text("ok\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(folder, keep)
    return final


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / COMPLETE).exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune(folder: Path, keep: int) -> None:
    for _, path in complete_checkpoints(folder)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def remove_incomplete(folder: Path) -> list[Path]:
    """Temp folders and step folders without COMPLETE are leftovers of a killed process."""
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and (path.name.startswith(".tmp-") or not (path / COMPLETE).exists()):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def latest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1][1] if found else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any) -> dict:
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    set_rng_state(state.pop("rng"), load_file(str(path / "rng.safetensors")))
    return state
