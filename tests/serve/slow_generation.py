"""``python -m tests.serve.slow_generation serve ...``: ``lmforge serve`` with every generated token delayed, so a
stream reliably outlasts a drain timeout (the tiny test models otherwise finish in well under a second)."""

from __future__ import annotations

import os
import time

from lmforge.inference.continuous import ContinuousScheduler
from lmforge.inference.generation import TextGenerator

DELAY_S = float(os.environ.get("LMFORGE_TEST_TOKEN_DELAY_S", "0.05"))
_stream = TextGenerator.stream


def _slow_stream(self, *args, **kwargs):
    for delta in _stream(self, *args, **kwargs):
        time.sleep(DELAY_S)  # on the model's worker thread, as a slow model would be
        yield delta


_iteration = ContinuousScheduler._iteration


def _slow_iteration(self):
    _iteration(self)
    time.sleep(DELAY_S)  # each decode step, on the scheduler's thread


TextGenerator.stream = _slow_stream
ContinuousScheduler._iteration = _slow_iteration

if __name__ == "__main__":
    from lmforge.cli import main

    main()
