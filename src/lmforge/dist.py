"""Process-group helpers over ``accelerate``: under ``accelerate launch``/``torchrun`` only the main process writes
run dirs and caches, the others wait; in a plain single process these are no-ops."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def state():
    import torch
    from accelerate import PartialState

    # accelerate only forms a CPU process group (gloo) when asked for the CPU explicitly
    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return world_size() == 1 or state().is_main_process


def barrier() -> None:
    if world_size() > 1:
        state().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (e.g. builds a cache); the others then find it done."""
    if world_size() == 1:
        yield
        return
    with state().main_process_first():
        yield
