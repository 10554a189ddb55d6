"""Inference pipelines and generation engines; ``lmforge.load(RUN)`` returns the pipeline for a run's task."""

from __future__ import annotations

from lmforge.inference.pipelines import PIPELINES, Pipeline

__all__ = ["PIPELINES", "Pipeline"]
