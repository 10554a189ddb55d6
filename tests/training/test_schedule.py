from __future__ import annotations

import pytest

from lmforge.training.schedule import Schedule


def test_linear_warmup_then_decay_to_zero():
    s = Schedule.create("linear", total_steps=100, warmup=0.1)
    assert s.warmup_steps == 10
    assert s.factor(0) == pytest.approx(1 / 11)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(55) == pytest.approx(0.5)
    assert s.factor(100) == 0.0


def test_cosine_and_constant():
    cos = Schedule.create("cosine", 100, 0)
    assert cos.factor(50) == pytest.approx(0.5)
    assert Schedule.create("constant", 100, 5).factor(90) == 1.0


def test_time_budget_drives_the_decay():
    s = Schedule.create("linear", total_steps=1000, warmup=0)
    assert s.factor(10, time_progress=0.5) == pytest.approx(0.5)  # half the time used: half the LR left
    assert s.factor(10, time_progress=1.0) == 0.0


def test_warmup_follows_the_time_budget_too():
    s = Schedule.create("linear", total_steps=10_000, warmup=0.1)
    assert s.factor(5, time_progress=0.05) == pytest.approx(0.5)  # 5% of the time: half-way through a 10% warmup
    assert s.factor(6, time_progress=0.10) == pytest.approx(1.0)
    assert s.factor(7, time_progress=0.55) == pytest.approx(0.5)
