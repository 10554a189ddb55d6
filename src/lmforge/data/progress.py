"""Progress for long reads (tokenizer training, the token cache): a bar on a terminal, a log line every few seconds
otherwise, so no step of a run is a long silent wait."""

from __future__ import annotations

import logging
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("lmforge")


def text_bytes(files: list[Path]) -> int:
    """About how many bytes of text the files hold (a gzip file's uncompressed size is in its last 4 bytes)."""
    total = 0
    for path in files:
        size = path.stat().st_size
        if path.suffix.lower() == ".gz" and size >= 18:
            with open(path, "rb") as fh:
                fh.seek(-4, 2)
                size = struct.unpack("<I", fh.read(4))[0] or size  # ISIZE: the size modulo 2**32
        total += size
    return total


def track(items: Iterable[T], total: int, what: str, *, size: Callable[[T], int] = len, enabled: bool = True,
          every: float = 10.0, unit: str | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged while showing how much of ``total`` bytes went by (``size`` of each item: its
    length in characters, a close enough count of bytes), or with ``unit`` (e.g. "passages") how many of ``total``
    things, their rate and the time left."""
    if not enabled:
        yield from items
        return
    started = last = time.monotonic()
    seen = 0
    bar = None
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        amount = [MofNCompleteColumn(), rate_column(unit)] if unit else [DownloadColumn()]
        bar = Progress("[bold]{task.description}", BarColumn(), *amount, TimeRemainingColumn(), transient=True)
        bar.start()
        task = bar.add_task(what, total=total)
    elif unit:
        log.info("%s: %s %s", what, f"{total:,}", unit)
    else:
        log.info("%s: %.1f MB of text", what, total / 1e6)
    try:
        for item in items:
            yield item  # counted once it is done with: the rate and time left are of work finished
            seen += size(item)
            now = time.monotonic()
            if now - last >= (0.2 if bar is not None else every):
                last = now
                if bar is not None:
                    bar.update(task, completed=seen)
                elif unit:
                    rate = seen / max(now - started, 1e-9)
                    log.info("%s: %.0f%% (%s of %s %s, %.0f %s/s, %s left)", what, 100 * min(1.0, seen / max(1, total)),
                             f"{seen:,}", f"{total:,}", unit, rate, unit, _duration((total - seen) / max(rate, 1e-9)))
                else:
                    log.info("%s: %.0f%% (%.1f of %.1f MB, %.0fs)", what, 100 * min(1.0, seen / max(1, total)),
                             seen / 1e6, total / 1e6, now - started)
    finally:
        if bar is not None:
            bar.stop()
    log.info("%s: done in %.1fs", what, time.monotonic() - started)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def rate_column(unit: str):
    """A rich column: things per second (made here, where rich is imported)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:,.0f} {unit}/s")

    return Rate()
