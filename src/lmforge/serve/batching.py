"""Micro-batching: concurrent requests for one model are gathered (up to N inputs or T ms) into one forward pass.

Inference runs on one worker thread per model, off the event loop; each caller gets exactly its own results.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lmforge")


@dataclass
class _Pending:
    inputs: list[Any]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], executor: ThreadPoolExecutor, *, max_inputs: int,
                 max_wait_ms: float, enabled: bool = True, on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.executor = executor
        self.max_inputs = max_inputs
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, inputs: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            if self.on_batch:
                self.on_batch(len(inputs))
            return await loop.run_in_executor(self.executor, self.run, inputs)
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._worker())
        pending = _Pending(inputs, loop.create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            count = len(batch[0].inputs)
            deadline = loop.time() + self.max_wait
            while count < self.max_inputs:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                count += len(item.inputs)
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            flat = [x for p in batch for x in p.inputs]
            if self.on_batch:
                self.on_batch(len(flat))
            try:
                results = await loop.run_in_executor(self.executor, self.run, flat)
            except Exception as exc:  # noqa: BLE001 - whatever the forward pass raised, every caller hears it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            start = 0
            for p in batch:
                part = results[start : start + len(p.inputs)]
                start += len(p.inputs)
                if not p.future.done():
                    p.future.set_result(part)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task  # the worker ends by cancellation; its batches' errors went to their callers
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("the micro-batching worker had stopped with an error")
