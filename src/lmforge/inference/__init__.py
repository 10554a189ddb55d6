"""Inference pipelines: ``lmforge.load(RUN)`` returns the pipeline for the run's task."""

from __future__ import annotations


from lmforge.inference.pipelines import Pipeline, load

__all__ = ["Pipeline", "load"]
