"""metrics.jsonl (one JSON object per logged step or evaluation) and the terminal progress display."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("lmforge")


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: drop what the interrupted run logged after its last complete checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 60  # a torn last line from a killed process: drop it


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A rich progress bar on a terminal; a plain line every ``quiet_every`` seconds otherwise (CI logs)."""

    def __init__(self, total: int | None, start: int, enabled: bool, description: str, quiet_every: float = 30.0) -> None:
        self.enabled = enabled
        self.total = total
        self.quiet_every = quiet_every
        self._last_line = 0.0
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=start, stats="")

    def update(self, step: int, stats: dict, eta: float | None) -> None:
        if not self.enabled:
            return
        text = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items() if v is not None
        )
        if eta is not None:
            text += f"  eta {_fmt_seconds(eta)}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=text)
        elif time.monotonic() - self._last_line >= self.quiet_every:
            self._last_line = time.monotonic()
            log.info("step %d%s  %s", step, f"/{self.total}" if self.total else "", text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
