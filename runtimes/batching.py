"""Adaptive batching: concurrent requests to one replica become one model call.

Small requests waste a model: a sentence embedding costs nearly the same whether the model sees one
sentence or thirty-two, because the fixed cost (Python dispatch, kernel launches, thread wake-ups)
dominates. The batcher queues decoded requests (named tensors, the same for V1 and V2), and runs them
together when the batch is full or the oldest has waited ``max_latency``. While a batch runs, new
requests queue, so under load the batch size grows by itself and at light load a request waits at
most ``max_latency`` — the same rule as Triton's dynamic batcher and Ray Serve's ``@serve.batch``.

Rules that keep batching invisible to clients:

- Requests are merged along the first (row) dimension only, and only with requests whose other
  dimensions and dtypes match; anything else forms its own batch. Nothing is padded here: a runtime
  that pads (a tokenizer) pads each batch to its own longest row, never to a global maximum.
- A request with more rows than ``max_batch_size`` runs alone, whole.
- If a merged call fails, every request in it is run again on its own, so one bad request gets its
  own error (a 400 for bad input) and the others their results.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from runtimes.tensors import Tensors

log = logging.getLogger("fnserve.runtime")

RunBatch = Callable[[Tensors], Tensors]


def rows_of(inputs: Tensors) -> int | None:
    """The request's row count, or None when its inputs disagree on it (it cannot be merged)."""
    counts = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(counts) != 1:
        return None
    rows = counts.pop()
    return rows if rows > 0 else None


def _layout(inputs: Tensors) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """What must match for two requests to share a batch: names, dtypes, and all but the first dimension."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))


@dataclass(eq=False)  # identity: two requests are never "equal", and numpy arrays do not compare to bool
class _Waiting:
    inputs: Tensors
    rows: int
    layout: tuple[tuple[str, str, tuple[int, ...]], ...]
    arrived: float
    result: asyncio.Future[tuple[Tensors, int]] = field(repr=False)
    context: contextvars.Context = field(default_factory=contextvars.copy_context, repr=False)
    """The request's context (its log ids and trace span): the model call runs in it, so its spans and
    lines are the request's. A merged batch runs in its oldest request's."""


@dataclass
class BatchStats:
    """Counters a replica can report (and tests can read): how well batching is working."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    largest: int = 0
    retried: int = 0


class Batcher:
    """Gathers requests for one model; ``await submit(inputs)`` returns that request's own outputs and the
    number of rows in the model call that produced them (1 request alone = its own rows)."""

    def __init__(self, run: RunBatch, executor: Executor, *, max_batch_size: int, max_latency_s: float,
                 name: str = "") -> None:
        self.run = run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.name = name
        self.stats = BatchStats()
        self._queue: deque[_Waiting] = deque()
        self._arrival = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, inputs: Tensors) -> tuple[Tensors, int]:
        loop = asyncio.get_running_loop()
        rows = rows_of(inputs)
        if rows is None or rows >= self.max_batch_size:  # nothing to gain, or too big to share
            return await self._call_alone(inputs, rows or 0)
        waiting = _Waiting(inputs, rows, _layout(inputs), loop.time(), loop.create_future())
        self._queue.append(waiting)
        self._arrival.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._gather(), name=f"{self.name}-batcher")
        return await waiting.result

    async def _call_alone(self, inputs: Tensors, rows: int) -> tuple[Tensors, int]:
        self._count(1, rows)
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.executor, context.run, self.run, inputs), rows

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        while self._queue:
            waiting = self._queue.popleft()
            if not waiting.result.done():
                waiting.result.set_exception(RuntimeError("the replica is shutting down"))

    # -- the gathering loop -----------------------------------------------------------------
    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            deadline = self._queue[0].arrived + self.max_latency_s
            while self._ready_rows() < self.max_batch_size and (left := deadline - loop.time()) > 0:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), left)
                except asyncio.TimeoutError:  # noqa: UP041 — a different class before Python 3.11
                    break
            batch = self._take()
            if batch:
                await self._run(batch)

    def _ready_rows(self) -> int:
        """Rows waiting that could join the oldest request's batch."""
        layout = self._queue[0].layout
        return sum(w.rows for w in self._queue if w.layout == layout)

    def _take(self) -> list[_Waiting]:
        """The oldest request plus, in arrival order, every compatible one that still fits."""
        layout = self._queue[0].layout
        batch: list[_Waiting] = []
        rest: deque[_Waiting] = deque()
        rows = 0
        for waiting in self._queue:
            if waiting.result.done():  # the client went away while it waited
                continue
            if waiting.layout == layout and rows + waiting.rows <= self.max_batch_size:
                batch.append(waiting)
                rows += waiting.rows
            else:
                rest.append(waiting)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        if len(batch) == 1:
            await self._settle(batch[0], loop, count=True)
            return
        total = sum(w.rows for w in batch)
        self._count(len(batch), total)
        try:
            merged = {name: np.concatenate([w.inputs[name] for w in batch]) for name in batch[0].inputs}
            outputs = await loop.run_in_executor(self.executor, batch[0].context.run, self.run, merged)
            parts = _split(outputs, [w.rows for w in batch])
        except Exception as exc:  # noqa: BLE001 — find out whose request it was
            log.info("%s: a batch of %d requests failed (%s); running each on its own",
                     self.name, len(batch), exc)
            self.stats.retried += 1
            for waiting in batch:
                await self._settle(waiting, loop, count=False)
            return
        for waiting, part in zip(batch, parts, strict=True):
            if not waiting.result.done():
                waiting.result.set_result((part, total))

    async def _settle(self, waiting: _Waiting, loop: asyncio.AbstractEventLoop, *, count: bool) -> None:
        """Run one request by itself and hand it its outcome, whatever that is."""
        if waiting.result.done():
            return
        if count:
            self._count(1, waiting.rows)
        try:
            outputs = await loop.run_in_executor(self.executor, waiting.context.run, self.run, waiting.inputs)
        except Exception as exc:  # noqa: BLE001 — handed to the request it belongs to
            if not waiting.result.done():
                waiting.result.set_exception(exc)
            return
        if not waiting.result.done():
            waiting.result.set_result((outputs, waiting.rows))

    def _count(self, requests: int, rows: int) -> None:
        self.stats.batches += 1
        self.stats.requests += requests
        self.stats.rows += rows
        self.stats.largest = max(self.stats.largest, rows)


def _split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Cut a batch's outputs back into one set per request, by row counts."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RuntimeError(f"output {name!r} has {array.shape[0] if array.ndim else 0} rows for a batch of "
                               f"{total}; a batched model must return one row per input row")
    cuts = np.cumsum(rows)[:-1]
    pieces = {name: np.split(array, cuts) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(rows))]
