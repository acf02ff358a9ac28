"""What the router accepts as a request body: a size cap, a deadline between chunks, and strict JSON.

The cap is checked twice: a ``Content-Length`` above it is refused before a byte of the body is read,
and a chunked body is counted as it arrives and refused the moment it passes the cap — a client never
makes the router buffer more than ``max_bytes``. Both answers close the connection, since the rest of
the body is never read. A client that stops sending mid-body gets a 408 once no chunk has come for
``idle_timeout`` seconds (nginx's client_body_timeout). Admin routes parse JSON with
:func:`parse_json`, which refuses what Python's json module would let through into the state store:
NaN, Infinity and numbers too large for a float, and nesting deeper than any admin body needs.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Awaitable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnserve.router.errors import error_response

MAX_JSON_DEPTH = 32


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (FNSERVE_MAX_BODY_BYTES)",
                         {"Connection": "close"})


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body stalled: no data for {seconds:g} s", {"Connection": "close"})


class _Deadline:
    """The stall deadline of one body read: a timer that cancels the reading task if it fires first.

    What asyncio.timeout() does, less its per-read bookkeeping (a context manager and a rescheduled
    handle per chunk were the router's largest own cost per request): one timer per read, cancelled
    when the chunk arrives."""

    __slots__ = ("task", "fired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


async def _within(seconds: float, waiting: Awaitable[Message]) -> Message:
    """``await waiting``, or asyncio.TimeoutError once ``seconds`` pass without it."""
    task = asyncio.current_task()
    assert task is not None
    deadline = _Deadline(task)
    timer = asyncio.get_running_loop().call_later(seconds, deadline.fire)
    try:
        return await waiting
    except asyncio.CancelledError:
        if not deadline.fired:
            raise  # cancelled from outside: not ours to turn into a timeout
        if sys.version_info >= (3, 11) and task.uncancel() > 0:
            raise  # cancelled from outside as well: that wins
        raise asyncio.TimeoutError from None
    finally:
        timer.cancel()


BODY_BYTES = "body_bytes"
"""Where in the scope's state BodyGuardMiddleware keeps the bytes of body read so far."""


class BodyGuardMiddleware:
    """Pure ASGI: caps and times a request's body as the route reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and int(declared) > self.max_bytes:  # httptools admits only digits here
            exc = BodyTooLarge(self.max_bytes)
            await error_response(Request(scope), exc.status_code, exc.detail, headers=exc.headers)(
                scope, receive, send)
            return
        received, complete = 0, False
        max_bytes, idle = self.max_bytes, self.idle_timeout
        state = scope.setdefault("state", {})

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come; it may take as long as it likes
                return await receive()
            try:
                message = await _within(idle, receive())
            except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on; not yet on 3.10
                raise BodyTimeout(idle) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                state[BODY_BYTES] = received  # what the access line reports for a body without a length
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, guarded, send)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is too large")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a deep value must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON: finite numbers only, at most ``max_depth`` levels. Raises ValueError saying why."""
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if _depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value

