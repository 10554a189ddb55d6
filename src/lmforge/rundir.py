"""The run dir: the unit every stage exchanges (see DESIGN.md).

```
RUN/model/         HF format (config.json, model.safetensors, tokenizer files)
RUN/lmforge.yaml   task, resolved config (with each field's description), labels, data fingerprints, versions
RUN/metrics.jsonl  one line per logged step and per evaluation
RUN/eval.json      the last evaluation; plots next to it (loss.png, confusion.png)
RUN/checkpoints/step-000400/   resumable, atomic (COMPLETE marker)
```
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lmforge.errors import RunDirError

RUN_FILE = "lmforge.yaml"


def _is_ours(path: Path, kind: str) -> bool:
    if kind == "tokenizer":
        return (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()
    return (path / RUN_FILE).exists()


def check_output_dir(path: Path | str, *, overwrite: bool, resume: bool = False, kind: str = "run") -> bool:
    """Would :func:`prepare_output_dir` accept ``path``? Raises what it would raise, touching nothing, so a command
    can refuse before any work; returns True when the folder holds something (to resume, or to replace)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"'{path}' exists and is a file", fix="choose another --out")
    if not (path.exists() and any(path.iterdir())):
        return False
    if resume:
        return True
    if not overwrite:
        raise RunDirError(
            f"'{path}' already exists and is not empty",
            fix="pass --overwrite to replace it" + (", --resume to continue it" if kind == "run" else "")
            + ", or choose another --out",
        )
    if not _is_ours(path, kind):
        raise RunDirError(
            f"refusing to --overwrite '{path}': it is not an lmforge {kind} folder "
            f"(no {'tokenizer.json' if kind == 'tokenizer' else RUN_FILE} in it)",
            fix="choose another --out; lmforge only replaces folders it wrote",
        )
    return True


def prepare_output_dir(path: Path | str, *, overwrite: bool, resume: bool = False, kind: str = "run") -> Path:
    """Create an output folder, refusing to touch what exists unless asked; never delete a folder we did not make."""
    path = Path(path).expanduser()
    if check_output_dir(path, overwrite=overwrite, resume=resume, kind=kind) and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: Path | str) -> dict:
    stat = Path(path).stat()
    return {"path": str(path), "bytes": stat.st_size, "sha256": _sha256(str(path), stat.st_size, stat.st_mtime)}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("lmforge", "torch", "transformers", "tokenizers", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


class RunDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    model_dir = property(lambda self: self.root / "model")
    config_path = property(lambda self: self.root / RUN_FILE)
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    eval_path = property(lambda self: self.root / "eval.json")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")

    @classmethod
    def create(cls, root: Path | str, *, overwrite: bool, resume: bool) -> RunDir:
        """Create (or, with resume, reopen) a run dir; under a distributed launch only the main process touches it."""
        from lmforge import dist

        if dist.is_main():
            prepare_output_dir(root, overwrite=overwrite, resume=resume, kind="run")
        dist.barrier()
        return cls(Path(root).expanduser())

    @classmethod
    def open(cls, spec: Path | str) -> RunDir:
        run = cls(spec)
        if not run.root.is_dir():
            raise RunDirError(f"run dir '{spec}' not found", fix="give the --out folder of a finetune or pretrain run")
        if not run.config_path.exists():
            raise RunDirError(
                f"'{spec}' is not an lmforge run dir (no {RUN_FILE})",
                fix="give the --out folder of a finetune or pretrain run",
            )
        if not (run.model_dir / "config.json").exists():
            raise RunDirError(
                f"run dir '{spec}' has no model yet (no model/config.json)",
                fix="let the run finish, or continue it with --resume",
            )
        return run

    def write_info(self, *, stage: str, task: str, config: BaseModel, extra: dict[str, Any] | None = None) -> None:
        from lmforge import dist
        from lmforge.config import to_commented_yaml

        if not dist.is_main():
            return
        head = {
            "stage": stage,
            "task": task,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(),
            **(extra or {}),
        }
        text = (
            f"# lmforge run ({stage}, task {task}); written by lmforge, read by `lmforge serve/evaluate/predict`\n"
            + yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=10_000)
            + "config:\n"
            + to_commented_yaml(config, indent=2)
            + "\n"
        )
        atomic_write_text(self.config_path, text)

    def update_info(self, **fields: Any) -> None:
        """Add or replace top-level keys (e.g. the final labels), keeping the rest of the file as written."""
        info = self.info()
        text = self.config_path.read_text(encoding="utf-8")
        head, _sep, rest = text.partition("\nconfig:\n")
        info_head = {k: v for k, v in info.items() if k != "config"}
        info_head.update(fields)
        first_line = head.splitlines()[0]
        new = first_line + "\n" + yaml.safe_dump(info_head, sort_keys=False, allow_unicode=True, width=10_000)
        atomic_write_text(self.config_path, new + "config:\n" + rest)

    def info(self) -> dict:
        with open(self.config_path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}

    def eval_results(self) -> dict | None:
        if self.eval_path.exists():
            return json.loads(self.eval_path.read_text(encoding="utf-8"))
        return None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
