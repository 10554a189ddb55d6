"""Learning-rate schedule: linear warmup, then linear/cosine decay or constant.

Progress is the larger of the step fraction and the time fraction (when a ``--max-time`` budget is set), so a run cut
by its time budget still ends its decay at the deadline instead of stopping at a high learning rate. With a step
budget only, the schedule is a pure function of the step, which keeps resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedule:
    kind: str  # linear | cosine | constant
    total_steps: int
    warmup_steps: int
    max_time: float | None = None

    @classmethod
    def create(cls, kind: str, total_steps: int, warmup: float, max_time: float | None) -> Schedule:
        warmup_steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
        return cls(kind, max(1, total_steps), min(warmup_steps, max(0, total_steps - 1)), max_time)

    def progress(self, step: int, elapsed: float) -> float:
        by_steps = step / self.total_steps
        by_time = elapsed / self.max_time if self.max_time else 0.0
        return min(1.0, max(by_steps, by_time))

    def factor(self, step: int, elapsed: float = 0.0) -> float:
        """LR multiplier for the optimizer step numbered ``step`` (0-based), ``elapsed`` seconds into the run."""
        by_time = elapsed / self.max_time if self.max_time else 0.0
        warm_share = self.warmup_steps / self.total_steps
        if self.warmup_steps:
            # warmup ends after its steps, or after its share of the time budget, whichever comes first
            warm = max((step + 1) / (self.warmup_steps + 1), by_time / warm_share)
            if warm < 1.0:
                return warm
        if self.kind == "constant":
            return 1.0
        done = self.progress(step, elapsed)
        frac = min(1.0, max(0.0, (done - warm_share) / max(1e-9, 1.0 - warm_share)))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return max(0.0, 1.0 - frac)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}
