"""The models a server holds: loaded in the background (readiness is 503 until all are), addressed by name."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.serve.batching import ContinuousBatcher, GenerationBatcher, MicroBatcher

log = logging.getLogger("lmforge")


@dataclass
class ServedModel:
    name: str
    path: Path
    pipeline: Any = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    batcher: MicroBatcher | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    error: str | None = None
    generation: ContinuousBatcher | GenerationBatcher | None = None  # generative models' batching
    routes: tuple[str, ...] = ()  # the server routes that answer this model (from its task in the task registry)
    card_metrics: tuple[str, ...] = ()  # eval.json keys its model card shows (ditto)
    extra: dict = field(default_factory=dict)  # what routes work out once per model (e.g. its parameter count)

    @property
    def task(self) -> str:
        return self.pipeline.task if self.pipeline else "loading"


def parse_model_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``RUN`` or ``name=RUN``; names default to the folder name and must be unique."""
    from lmforge.errors import LmforgeError

    seen: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).expanduser().resolve().name, spec
        if name in seen:
            raise LmforgeError(f"two models are named '{name}'", fix=f"name them: lmforge serve a={path} b=...")
        seen[name] = Path(path).expanduser()
    return list(seen.items())


class ModelRegistry:
    def __init__(self, specs: list[tuple[str, Path]], settings, metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {name: ServedModel(name, path) for name, path in specs}
        self.loaded = threading.Event()
        self.failed: str | None = None
        self.kb = None  # the knowledge base of --kb, opened with the models

    @property
    def default(self) -> str | None:
        return next(iter(self.models), None)

    def load_all(self) -> None:
        from lmforge.stages import load
        from lmforge.tasks import registry

        try:
            if self.settings.kb is not None:
                from lmforge.kb import KnowledgeBase

                self.kb = KnowledgeBase.open(self.settings.kb, self.settings.kb_store)
                self.kb.embedder  # noqa: B018 - loads the encoder now, not on the first question
            for served in self.models.values():
                started = time.monotonic()
                served.pipeline = load(served.path, name=served.name, precision=self.settings.precision)
                task = registry.get(served.pipeline.task)
                served.routes, served.card_metrics = task.routes, task.metrics
                generator = getattr(served.pipeline, "generator", None)
                if generator is not None and generator.static is not None and self.settings.scheduler == "continuous":
                    from lmforge.serve.metrics import GenerationObserver

                    served.generation = ContinuousBatcher(
                        generator, max_rows=self.settings.generation_batch, chunk=self.settings.prefill_chunk,
                        observer=GenerationObserver(self.metrics, served.name))
                elif generator is not None:  # a model lmforge has no static-cache engine for: the batch runs out
                    served.generation = GenerationBatcher(
                        served.pipeline.generator, served.executor, max_rows=self.settings.generation_batch,
                        max_wait_ms=self.settings.batch_wait_ms,
                        on_batch=lambda n, name=served.name: self.metrics.batch_size.labels(name).observe(n),
                    )
                if served.pipeline.batchable:
                    served.batcher = MicroBatcher(
                        self._runner(served), served.executor,
                        max_inputs=self.settings.batch_max_inputs, max_wait_ms=self.settings.batch_wait_ms,
                        enabled=self.settings.micro_batch,
                        on_batch=lambda n, name=served.name: self.metrics.batch_size.labels(name).observe(n),
                    )
                log.info("loaded %s (%s) in %.1fs", served.name, served.pipeline.task, time.monotonic() - started)
            self.loaded.set()
        except Exception as exc:  # noqa: BLE001 - any load failure: readiness stays 503 and says why
            self.failed = str(exc)
            log.error("could not load models: %s", exc)

    @staticmethod
    def _runner(served: ServedModel):
        def run(texts: list[str]) -> list[dict]:
            return served.pipeline.predict(texts, truncate=True)

        return run

    def shutdown(self) -> None:
        for served in self.models.values():
            served.executor.shutdown(wait=False, cancel_futures=True)
