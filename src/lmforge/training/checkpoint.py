"""Atomic, verified, resumable checkpoints.

A checkpoint is written to ``checkpoints/.tmp-step-N-<pid>``: model weights (safetensors), optimizer state (tensors
only, loaded with ``weights_only=True``), RNG states and ``trainer_state.json`` (step, epoch, data position, elapsed
time, schedule, best metric). Every file is flushed to disk (fsync) before the ``COMPLETE`` marker that vouches for
it is written; the marker records each file's size and CRC-32, is flushed itself, and only then is the folder
renamed to ``checkpoints/step-00000N``. A process killed half-way leaves a temp folder, which resume removes.

Resume (:func:`resume_point`) restores the newest checkpoint that verifies and loads, and sorts what can go wrong:

- torn or partial — a file missing or shorter/longer than recorded, a marker that does not parse, or (for a
  checkpoint whose marker recorded nothing) a file that ends mid-way: what a crash, a full disk or an interrupted
  copy leaves. Resume warns, naming the checkpoint and the file, and falls back to the previous checkpoint.
- altered, unsafe or foreign — a file with its recorded size but other bytes, or one that verifies and still does
  not load (optimizer state that ``torch.load(weights_only=True)`` refuses, weights that do not fit the model): no
  crash leaves that, so the file was replaced, edited or damaged after it was complete (possible tampering), or the
  run is resumed with other settings. Resume stops with :class:`~lmforge.errors.CheckpointError` (exit code 2)
  rather than guess or hide it behind an older checkpoint, and never unpickles anything.

Checkpoints from before the marker recorded files (``COMPLETE`` reads ``ok``) load unverified; a load failure there
counts as torn, unless the optimizer file is whole (an intact zip archive or pickle stream) and still refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import random
import re
import shutil
import warnings
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import CheckpointError

log = logging.getLogger("lmforge")

COMPLETE = "COMPLETE"
STEP_DIR = re.compile(r"^step-(\d+)$")
MARKER_FORMAT = 1
FILES = ("model.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json")
STATE_KEYS = ("step", "epoch", "position", "rng")
CHUNK = 1 << 22


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


# ------------------------------------------------------------------------------------------------ writing
def _crc32(fh) -> str:
    # CRC-32, not SHA-256: it is there to catch damage, not forgers (whoever can replace a file can rewrite the
    # marker next to it; weights_only and safetensors are the safety boundary). Measured on 2 CPU cores for a
    # 402 MB checkpoint (134 MB weights + 269 MB AdamW state): writing + fsync ~300 ms, CRC-32 of every file
    # ~115 ms (3.5 GB/s), SHA-256 ~250 ms; at resume CRC-32 adds ~115 ms to a ~150-200 ms load.
    crc = 0
    for block in iter(lambda: fh.read(CHUNK), b""):
        crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _seal(path: Path) -> dict[str, Any]:
    """Flush a written file to disk and return what the marker records of it."""
    with open(path, "r+b") as fh:
        crc = _crc32(fh)
        os.fsync(fh.fileno())
        return {"size": os.fstat(fh.fileno()).st_size, "crc32": crc}


def _fsync_dir(path: Path) -> None:
    """Make the entries of a folder (new files, renames) durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: nothing more can be done there
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    folder: Path, step: int, model: torch.nn.Module, optimizer: Any, state: dict, keep: int
) -> Path:
    from safetensors.torch import save_file, save_model

    if not folder.is_dir():
        folder.mkdir(parents=True)
        _fsync_dir(folder.parent)
    final = folder / checkpoint_name(step)
    tmp = folder / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    replaced = folder / f".tmp-replaced-{checkpoint_name(step)}-{os.getpid()}"
    for leftover in (tmp, replaced):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    # the marker vouches only for bytes already on disk: every file is checksummed and fsynced before it is
    # written (in a worker, while the next file is serialized: both release the GIL), and the marker itself and
    # the folder entries before the rename that makes the checkpoint visible
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-checkpoint") as sealer:
        sealed = {}
        save_model(model, str(tmp / "model.safetensors"))
        sealed["model.safetensors"] = sealer.submit(_seal, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        sealed["optimizer.pt"] = sealer.submit(_seal, tmp / "optimizer.pt")
        rng_json, rng_tensors = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        sealed["rng.safetensors"] = sealer.submit(_seal, tmp / "rng.safetensors")
        state_text = json.dumps({**state, "step": step, "rng": rng_json})
        (tmp / "trainer_state.json").write_text(state_text, encoding="utf-8")
        sealed["trainer_state.json"] = sealer.submit(_seal, tmp / "trainer_state.json")
        marker = {"format": MARKER_FORMAT, "step": step, "files": {name: sealed[name].result() for name in FILES}}
    with open(tmp / COMPLETE, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(marker, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        os.replace(final, replaced)  # a folder cannot be renamed onto a non-empty one
    os.replace(tmp, final)
    _fsync_dir(folder)
    shutil.rmtree(replaced, ignore_errors=True)
    prune(folder, keep, current=step)
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


def prune(folder: Path, keep: int, current: int | None = None) -> None:
    """Keep the ``keep`` newest complete checkpoints. With ``current`` (the step just saved), checkpoints past it
    go too: they belong to an abandoned line of the run, which resume fell back from because they were damaged."""
    found = complete_checkpoints(folder)
    if current is not None:
        for step, path in found:
            if step > current:
                shutil.rmtree(path, ignore_errors=True)
        found = [(step, path) for step, path in found if step <= current]
    for _, path in found[:-keep]:
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
    """The newest checkpoint with a COMPLETE marker, unverified; :func:`resume_point` verifies and falls back."""
    found = complete_checkpoints(folder)
    return found[-1][1] if found else None


# ------------------------------------------------------------------------------------------------ reading
class _Unusable(Exception):
    """Why a checkpoint cannot be resumed from; a ``torn`` one is skipped for the previous checkpoint."""

    def __init__(self, file: str, what: str, *, torn: bool, fix: str | None = None, detail: str = "") -> None:
        super().__init__(f"{file} {what}")
        self.file, self.what, self.torn, self.fix, self.detail = file, what, torn, fix, detail


def _brief(exc: BaseException) -> str:
    """The informative part of a loader's error message, on one line."""
    text = str(exc) or type(exc).__name__
    if "WeightsUnpickler error:" in text:  # torch's refusal wraps the reason in paragraphs of advice
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def _attempt(action: Callable[[], Any], file: str, what: str, *, torn: bool, fix: str | None = None) -> Any:
    """Run one load step; its failure becomes one named problem."""
    try:
        return action()
    except Exception as exc:  # noqa: BLE001 - damaged bytes make loaders raise anything (OSError, EOFError,
        # RuntimeError, UnpicklingError, SafetensorError, UnicodeDecodeError ...); none may end in a traceback
        detail = _brief(exc)
        raise _Unusable(file, f"{what} ({detail})", torn=torn, fix=fix, detail=detail) from None


def _read_marker(path: Path) -> dict[str, dict] | None:
    """The marker's record of each file; None for a marker that recorded nothing (``ok``, before format 1)."""
    try:
        text = (path / COMPLETE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unusable(COMPLETE, f"cannot be read ({_brief(exc)})", torn=True) from None
    if text.strip() == "ok":
        return None
    try:
        files = json.loads(text)["files"]
        valid = all(isinstance(files[name]["size"], int) and isinstance(files[name]["crc32"], str) for name in FILES)
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise _Unusable(COMPLETE, "is not a whole marker as lmforge writes it (torn or edited)", torn=True)
    return {name: files[name] for name in FILES}


def _verify(path: Path, files: dict[str, dict]) -> None:
    # sizes first: a stat per file finds a torn write before gigabytes are read for checksums
    for name, recorded in files.items():
        try:
            size = (path / name).stat().st_size
        except OSError:
            raise _Unusable(name, "is missing", torn=True) from None
        if size != recorded["size"]:
            raise _Unusable(name, f"has {size} bytes where {recorded['size']} were written: a torn or partial "
                                  "write or copy", torn=True)
    for name, recorded in files.items():
        with open(path / name, "rb") as fh:
            crc = _crc32(fh)
        if crc != recorded["crc32"]:
            raise _Unusable(name, f"has its recorded size ({recorded['size']} bytes) but not its recorded content "
                                  f"(CRC-32 {crc}, written {recorded['crc32']}): it was replaced, edited or "
                                  "damaged on disk after the checkpoint was complete", torn=False)


def _whole_file(path: Path) -> bool:
    """True for an intact zip archive or a pickle stream that ends where the file ends: not a torn write."""

    def whole() -> bool:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        with open(path, "rb") as fh:
            for _ in pickletools.genops(fh):  # walks the opcodes; builds no object, runs no code
                pass
            return fh.read(1) == b""

    try:
        return _attempt(whole, path.name, "", torn=True)
    except _Unusable:  # unreadable is not whole
        return False


def _read(path: Path, verified: bool) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """Every file of the checkpoint, parsed into memory before any of it touches the model (so a failure leaves
    the model and optimizer as they were). Files that verified and still fail are not torn writes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    def header() -> None:
        with safe_open(str(path / "model.safetensors"), "pt") as weights:
            weights.keys()  # opening checks that the header parses and the file covers every tensor it declares

    def optimizer_file() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of files it then refuses
            return torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)

    _attempt(header, "model.safetensors", "is not a whole safetensors file", torn=not verified)
    try:
        optimizer_state = _attempt(optimizer_file, "optimizer.pt", "cannot be read: a torn or partial write",
                                   torn=True)
    except _Unusable as problem:
        if not (verified or _whole_file(path / "optimizer.pt")):
            raise
        raise _Unusable("optimizer.pt", f"is not a tensor-only optimizer state: torch.load(weights_only=True) "
                                        f"refused it ({problem.detail}); lmforge never unpickles anything else, and "
                                        "a crash does not leave such a file: it may have been tampered with",
                        torn=False) from None
    if not isinstance(optimizer_state, dict) or not {"state", "param_groups"} <= optimizer_state.keys():
        raise _Unusable("optimizer.pt", "is not an optimizer state", torn=False)
    state = _attempt(lambda: json.loads((path / "trainer_state.json").read_text(encoding="utf-8")),
                     "trainer_state.json", "is not valid JSON", torn=not verified)
    missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise _Unusable("trainer_state.json", f"lacks {', '.join(missing)}", torn=False)
    rng = _attempt(lambda: load_file(str(path / "rng.safetensors")), "rng.safetensors",
                   "is not a whole safetensors file", torn=not verified)
    return optimizer_state, state, rng


def _load(path: Path, model: torch.nn.Module, optimizer: Any) -> dict:
    from safetensors.torch import load_model

    files = _read_marker(path)
    if files is not None:
        _verify(path, files)
    else:
        log.debug("%s has a marker from before checksums: loading it unverified", path)
    optimizer_state, state, rng = _read(path, verified=files is not None)
    other_run = "resume with the settings the run was started with (see lmforge.yaml), or start over with --overwrite"
    _attempt(lambda: load_model(model, str(path / "model.safetensors")), "model.safetensors",
             "does not fit this model", torn=False, fix=other_run)
    _attempt(lambda: optimizer.load_state_dict(optimizer_state), "optimizer.pt",
             "does not fit this model's optimizer", torn=False, fix=other_run)
    _attempt(lambda: set_rng_state(state.pop("rng"), rng), "rng.safetensors",
             "or the RNG state in trainer_state.json cannot be restored", torn=False)
    return state


def _error(path: Path, problem: _Unusable) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path.name} cannot be resumed from: {problem.file} {problem.what}",
        where=str(path / problem.file),
        fix=problem.fix or f"delete the folder {path} to resume from the checkpoint before it, "
                           "or start over with --overwrite",
    )


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any) -> dict:
    """Verify and restore one checkpoint into ``model`` and ``optimizer``; returns its trainer state.

    Raises :class:`CheckpointError` for any problem, torn or not; :func:`resume_point` falls back instead."""
    try:
        return _load(path, model, optimizer)
    except _Unusable as problem:
        raise _error(path, problem) from None


def resume_point(folder: Path, model: torch.nn.Module, optimizer: Any) -> tuple[dict, Path] | None:
    """Restore the newest checkpoint in ``folder`` that verifies and loads: (its trainer state, its path), or None
    when there is none. Torn or partial checkpoints are skipped with a warning; one that was altered, is unsafe to
    load, or belongs to another model raises :class:`CheckpointError`. Nothing is written: every rank may call it."""
    for _, path in reversed(complete_checkpoints(folder)):
        try:
            return _load(path, model, optimizer), path
        except _Unusable as problem:
            if not problem.torn:
                raise _error(path, problem) from None
            log.warning("skipping checkpoint %s: %s %s", path, problem.file, problem.what)
    return None
