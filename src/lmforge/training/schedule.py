"""Learning-rate schedule: linear warmup, then linear/cosine decay or constant.

Progress is the larger of the step fraction and the time fraction (under a ``--max-time`` budget, the share of the
training time used; see :class:`lmforge.training.budget.Budget`), so a run cut by its time budget warms up within its
share of the time and ends its decay at the deadline instead of stopping at a high learning rate. With a step budget
only, the schedule is a pure function of the step, which keeps resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedule:
    kind: str  # linear | cosine | constant
    total_steps: int
    warmup_steps: int

    @classmethod
    def create(cls, kind: str, total_steps: int, warmup: float) -> Schedule:
        """``warmup`` is a fraction of the steps if < 1, else a step count."""
        warmup_steps = round(warmup * total_steps) if warmup < 1 else int(warmup)
        return cls(kind, max(1, total_steps), min(warmup_steps, max(0, total_steps - 1)))

    def factor(self, step: int, time_progress: float = 0.0) -> float:
        """LR multiplier for the optimizer step numbered ``step`` (0-based), ``time_progress`` (0..1) into a time
        budget."""
        warm_share = self.warmup_steps / self.total_steps
        if self.warmup_steps:
            # warmup ends after its steps, or after its share of the time budget, whichever comes first
            warm = max((step + 1) / (self.warmup_steps + 1), time_progress / warm_share)
            if warm < 1.0:
                return warm
        if self.kind == "constant":
            return 1.0
        done = min(1.0, max(step / self.total_steps, time_progress))
        frac = min(1.0, max(0.0, (done - warm_share) / max(1e-9, 1.0 - warm_share)))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return max(0.0, 1.0 - frac)
