"""The activator: where a request waits when no replica can take it right now.

Like Knative's activator and queue-proxy together: a request goes to the ready replica with the fewest
outstanding requests that still has room under ``containerConcurrency``; otherwise it waits in a bounded
per-function queue (a cold start, or every replica full) until one has room. Past the bound → 503 with
Retry-After; past the deadline → 504. Every queued and in-flight request is counted into the
concurrency the autoscaler scales on, so waiting requests ask for replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from fnserve.backends.base import BackendError, NoReadyReplica
from fnserve.backends.local.autoscaler import ConcurrencyRecorder
from fnserve.backends.local.replica import Replica


class QueueFull(BackendError):
    status = 503
    retry_after = 1


class ActivationTimeout(BackendError):
    status = 504


@dataclass
class _Waiter:
    future: asyncio.Future[Replica]
    cold: bool
    owner: Activator


class Activator:
    def __init__(self, name: str, container_concurrency: int, queue_limit: int, timeout: float,
                 recorder: ConcurrencyRecorder) -> None:
        self.name = name
        self.container_concurrency = container_concurrency
        self.queue_limit = queue_limit
        self.timeout = timeout
        self.recorder = recorder
        self.replicas: list[Replica] = []
        self._waiting: deque[_Waiter] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def _has_room(self, replica: Replica) -> bool:
        return replica.state == "ready" and (self.container_concurrency == 0
                                             or replica.outstanding < self.container_concurrency)

    def _pick(self) -> Replica | None:
        candidates = [r for r in self.replicas if self._has_room(r)]
        return min(candidates, key=lambda r: r.outstanding) if candidates else None

    def ready_count(self) -> int:
        return sum(r.state == "ready" for r in self.replicas)

    async def acquire(self) -> tuple[Replica, float | None]:
        """A replica with room for one more request, and how long a cold start made it wait (ms)."""
        replica = self._pick()
        if replica is not None and not self._waiting:
            replica.begin()
            self.recorder.add(time.monotonic(), +1)
            return replica, None
        if len(self._waiting) >= self.queue_limit:
            raise QueueFull(f"function {self.name!r}: {self.queue_limit} requests are already waiting")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), cold=self.ready_count() == 0, owner=self)
        self._waiting.append(waiter)
        started = time.monotonic()
        self.recorder.add(started, +1)
        try:
            replica = await asyncio.wait_for(asyncio.shield(waiter.future), self.timeout)
        except asyncio.TimeoutError:
            waiter.owner._abandon(waiter)
            raise ActivationTimeout(f"function {self.name!r}: no replica could take the request within "
                                    f"{self.timeout:g} s") from None
        except BaseException:
            waiter.owner._abandon(waiter)
            raise
        waited_ms = (time.monotonic() - started) * 1000
        return replica, (waited_ms if waiter.cold else None)

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter that gave up: out of the queue, or, if a replica was just handed to it, hand it back."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            self.recorder.add(time.monotonic(), -1)
        elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release(waiter.future.result())

    def adopt(self, other: Activator) -> None:
        """Take over the requests still waiting on a previous revision (a redeploy during a cold start)."""
        now = time.monotonic()
        while other._waiting:
            waiter = other._waiting.popleft()
            other.recorder.add(now, -1)
            waiter.owner = self
            self._waiting.append(waiter)
            self.recorder.add(now, +1)
        self.dispatch()

    def idle(self) -> bool:
        return not self._waiting and all(r.outstanding == 0 for r in self.replicas)

    def release(self, replica: Replica) -> None:
        replica.end()
        self.recorder.add(time.monotonic(), -1)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand waiting requests to replicas with room, oldest request first."""
        while self._waiting:
            replica = self._pick()
            if replica is None:
                return
            waiter = self._waiting.popleft()
            if waiter.future.done():  # cancelled while queued; its count was already taken back
                continue
            replica.begin()
            waiter.future.set_result(replica)

    def fail_waiting(self, message: str) -> None:
        """Nothing can serve (every start failed): answer the queue now rather than at the deadline."""
        while self._waiting:
            waiter = self._waiting.popleft()
            self.recorder.add(time.monotonic(), -1)
            if not waiter.future.done():
                waiter.future.set_exception(NoReadyReplica(message))
