"""Background tasks an owner starts and must stop: held until they end (the event loop keeps only a weak
reference to a task, so one nobody holds can vanish mid-run) and cancelled together when the owner closes.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any


def detached(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task that starts with an empty context, not a copy of the caller's: a replica started, or a ticker
    begun, during a request outlives it, and its log lines and spans must not carry that request's ids."""
    return contextvars.Context().run(asyncio.ensure_future, coroutine)


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = detached(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel(self) -> None:
        """Cancel every task still running (they end at their next await)."""
        for task in self._tasks:
            task.cancel()

    async def wait(self, timeout: float) -> None:
        """Until every task has ended, or ``timeout`` seconds."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
