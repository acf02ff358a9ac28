"""Forwarding one invocation to a replica and writing its answer back, as raw ASGI messages.

Bodies pass through untouched (binary tensor bodies and compressed bodies too: nothing is decoded).
Hop-by-hop headers are dropped both ways. An error answer that is not the platform's shape (JSON with a
string ``"error"``) — from a replica of another make, or a server layer below one — is rewritten into
it, keeping its status; FastAPI's 422 for an unreadable body becomes the 400 it is.

The retry rule is the upstream client's (router/upstream.py): :class:`Unreachable` means nothing was
sent, so the caller may try another replica; :class:`Dropped` (the replica closed the connection, or
answered with something that is not HTTP, after the request was written) is never re-sent — the caller
answers 503 with Retry-After; no answer in time is a 504, answered here.

A streamed answer (chunked, or an event stream) is written on as each piece arrives, never gathered.
Its deadlines are Knative's: the whole request within ``timeout``, its first byte within
``responseStartTimeout``, no pause between pieces longer than ``idleTimeout``. The client's disconnect
closes the upstream connection at once, so the replica stops generating. A stream that fails after its
head was sent can no longer change its status: an event stream gets a last ``data: {"error": …}`` event
(what OpenAI's clients raise from), any other the connection closed mid-body, never a clean end.
Token counts come from the replica (router/usage.py reads them), for the invocation's accounting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Receive, Send

from fnserve import tracing
from fnserve.manifest import FunctionSpec
from fnserve.router.errors import error_body
from fnserve.router.invocation import GENERATE, Headers, Invocation
from fnserve.router.upstream import Answer, Dropped, Stream, Unreachable, UpstreamPool
from fnserve.router.usage import StreamUsage, usage_from_headers

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
# Set again for the new hop: by the proxy (request) or by uvicorn (response). ``expect``: the body is
# sent at once, so a replica must not be asked to confirm it first.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-request-id"}
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"date", b"server", b"x-request-id"}  # the router's own id
_JSON_BY_DEFAULT = (b"", b"application/x-www-form-urlencoded")
_JSON = (b"content-type", b"application/json")

def _connection_named(headers: Headers) -> frozenset[bytes]:
    """Headers a Connection header declares hop-by-hop for this hop."""
    named: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def upstream_head(method: str, target: str, host: bytes, headers: Headers, request_id: str, body_length: int,
                  *, json_default: bool, trace: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """The request line and headers for the replica: the client's, less the hop's own, plus ours. With
    ``trace`` (the router's own propagation headers) the client's traceparent is replaced by the router's
    span, so the replica's spans are its children; without, the client's passes through."""
    drop = _REQUEST_DROP | _connection_named(headers) | (tracing.PROPAGATION_HEADERS if trace else frozenset())
    lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode("latin-1"), target.encode("latin-1"), host)]
    content_type, at, encoding, binary = b"", -1, False, False
    for key, value in headers:
        if key in drop:
            continue
        if key == b"content-type":
            content_type, at = value, len(lines)
        elif key == b"accept-encoding":
            encoding = True
        elif key == b"inference-header-content-length":
            binary = True
        lines.append(b"%s: %s\r\n" % (key, value))
    if json_default and content_type in _JSON_BY_DEFAULT and not binary:
        # `curl -d '{...}'` labels JSON as a form; KServe would then read it as binary tensors
        if at < 0:
            lines.append(b"content-type: application/json\r\n")
        else:
            lines[at] = b"content-type: application/json\r\n"
    if not encoding:
        lines.append(b"accept-encoding: identity\r\n")  # never compress what the client can't read
    lines.extend(b"%s: %s\r\n" % header for header in trace)
    lines.append(b"x-request-id: %s\r\ncontent-length: %d\r\n\r\n" % (request_id.encode("latin-1"), body_length))
    return b"".join(lines)


def _error_message(status: int, content: bytes, content_type: bytes, openai: bool = False) -> str | None:
    """The replacement message for an upstream error body not in the route's shape (None: it is)."""
    if b"json" in content_type:
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if openai and isinstance(error, dict) and isinstance(error.get("message"), str):
            return None  # OpenAI's shape, from the replica's OpenAI routes
        if isinstance(error, str):
            return error if openai else None
        if isinstance(data, dict) and "detail" in data:
            detail = data["detail"]
            if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [...], "msg": "..."}, ...]
                return "invalid request: " + "; ".join(
                    f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg', '')}" if isinstance(d, dict) else str(d)
                    for d in detail[:5])
            return str(detail)
    return content.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {status} with an empty body"


async def respond_start(invocation: Invocation, send: Send, status: int, headers: Headers) -> None:
    """Write the answer's head, with the invocation's own headers added, and note its status."""
    invocation.status = status
    headers += invocation.headers
    if invocation.cold_start_ms is not None:
        headers.append((b"x-fnserve-cold-start", b"%.0f" % invocation.cold_start_ms))
    if invocation.revision is not None:  # which revision answered: during a canary rollout, one of two
        headers.append((b"x-fnserve-revision", b"%d" % invocation.revision.number))
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def respond(invocation: Invocation, send: Send, status: int, headers: Headers, body: bytes) -> None:
    """Write the whole answer (see respond_start)."""
    await respond_start(invocation, send, status, headers)
    await send({"type": "http.response.body", "body": body})


async def respond_error(invocation: Invocation, send: Send, status: int, message: str, *,
                        retry_after: int | None = None, headers: Mapping[str, str] | None = None,
                        fields: Mapping[str, Any] | None = None) -> None:
    """The platform's error shape as the invocation's answer."""
    raw = [_JSON]
    if retry_after is not None:
        raw.append((b"retry-after", str(retry_after).encode()))
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    await respond(invocation, send, status, raw, error_body(message, invocation.request_id, fields, status=status,
                                                            openai=invocation.openai))


@dataclass(frozen=True, slots=True)
class Deadlines:
    """A function's request deadlines in seconds (``spec.timeout``, ``responseStartTimeout``, ``idleTimeout``)."""

    total: float
    start: float | None = None
    idle: float | None = None

    @classmethod
    def of(cls, spec: FunctionSpec) -> Deadlines:
        return cls(spec.timeout, spec.response_start_timeout, spec.idle_timeout)


class ClientGone(Exception):
    """The client disconnected while its answer was being streamed."""


def _stream_error_event(invocation: Invocation, status: int, message: str) -> bytes:
    """The last event of an event stream that failed mid-way, in the route's error shape."""
    body = error_body(message, invocation.request_id, status=status, openai=invocation.openai)
    return b"data: " + body + b"\n\n"


class Proxy:
    def __init__(self, connect_timeout: float) -> None:
        self.pool = UpstreamPool(connect_timeout)
        self._addresses: dict[str, tuple[str, int, bytes]] = {}

    def close(self) -> None:
        self.pool.close()

    def _address(self, url: str) -> tuple[str, int, bytes]:
        address = self._addresses.get(url)
        if address is None:
            parts = urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            address = self._addresses[url] = (host, port, parts.netloc.encode("latin-1"))
        return address

    async def forward(self, invocation: Invocation, method: str, query: bytes, headers: Headers, body: bytes,
                      url: str, replica: str, deadlines: Deadlines, send: Send, receive: Receive) -> None:
        """Send the request to the replica at ``url`` and write its answer to ``send``; raises Unreachable
        when no connection could be made, Dropped when the replica failed the request after it was sent
        (in both cases nothing was written to ``send``)."""
        host, port, netloc = self._address(url)
        target = invocation.upstream_path + (f"?{query.decode('latin-1')}" if query else "")
        head = upstream_head(method, target, netloc, headers, invocation.request_id, len(body),
                             json_default=invocation.action != "model",
                             trace=tracing.inject() if tracing.enabled() else [])
        loop = asyncio.get_running_loop()
        sent = loop.time()
        asking = self.pool.request((host, port), head, body, deadlines.total, start_timeout=deadlines.start,
                                   head_request=method == "HEAD")
        try:
            # a whole generation is worth stopping when its client leaves; a stream's head comes at once
            watch = invocation.action == GENERATE and not invocation.streamed
            answer = await (_unless_gone(asking, receive) if watch else asking)
        except (TimeoutError, asyncio.TimeoutError):
            waited = deadlines.total if deadlines.start is None else min(deadlines.start, deadlines.total)
            await respond_error(invocation, send, 504, f"function {invocation.function!r} did not answer within "
                                                       f"{waited:g} s")
            return
        except ClientGone:
            invocation.status = 499
            return
        except Unreachable:
            raise Unreachable(f"function {invocation.function!r}: replica {replica} is not reachable") from None
        invocation.upstream_ms = (loop.time() - sent) * 1000
        status = answer.status
        if status >= 400:
            content_type = next((v for k, v in answer.headers if k == b"content-type"), b"")
            message = _error_message(status, answer.body, content_type, invocation.openai)
            if message is not None:
                await respond_error(invocation, send, 400 if status == 422 else status, message)
                return
        drop = _RESPONSE_DROP | _connection_named(answer.headers)
        kept = [(k, v) for k, v in answer.headers if k not in drop]
        if invocation.metered:
            usage_from_headers(invocation, answer.headers)
        if answer.stream is None:
            await respond(invocation, send, status, kept, answer.body)
            return
        try:
            await self._pass_stream(invocation, answer.stream, status, kept, deadlines, sent, send, receive)
        finally:
            answer.stream.close()
            invocation.upstream_ms = (loop.time() - sent) * 1000

    async def _pass_stream(self, invocation: Invocation, stream: Stream, status: int, headers: Headers,
                           deadlines: Deadlines, sent: float, send: Send, receive: Receive) -> None:
        """Write a streamed answer on, piece by piece, until it ends, fails, or its client goes."""
        loop = asyncio.get_running_loop()
        event_stream = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
        usage = StreamUsage() if invocation.metered else None
        end = sent + deadlines.total
        idle = deadlines.idle
        await respond_start(invocation, send, status, headers)
        watcher = asyncio.ensure_future(receive())  # after the body, only the client's disconnect comes

        def gone(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                stream.abort(ClientGone())

        watcher.add_done_callback(gone)
        last = None
        try:
            while True:
                now = loop.time()
                chunk = await stream.read(end if idle is None else min(end, now + idle))
                if not chunk:
                    break
                arrived = loop.time()
                if last is None:
                    invocation.ttft_ms = (arrived - sent) * 1000
                else:
                    invocation.chunk_gaps_ms.append((arrived - last) * 1000)
                last = arrived
                if usage is not None:
                    usage.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ClientGone:
            invocation.status = 499
            return
        except (TimeoutError, asyncio.TimeoutError):
            paused = idle is not None and loop.time() < end - 0.001
            what = f"paused longer than idleTimeout ({idle:g} s)" if paused else \
                f"did not finish within timeout ({deadlines.total:g} s)"
            await self._fail_stream(invocation, send, event_stream, 504, f"function {invocation.function!r} {what}")
            return
        except Dropped as exc:
            await self._fail_stream(invocation, send, event_stream, 502,
                                    f"function {invocation.function!r}: the replica broke off its answer ({exc})")
            return
        finally:
            watcher.remove_done_callback(gone)
            watcher.cancel()
            if usage is not None:
                usage.settle(invocation)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _fail_stream(invocation: Invocation, send: Send, event_stream: bool, status: int, message: str) -> None:
        """A stream that cannot go on: its status is out already, so the failure is said in the body."""
        invocation.status = status
        if event_stream:
            await send({"type": "http.response.body", "body": _stream_error_event(invocation, status, message),
                        "more_body": False})
        # otherwise the body is left incomplete: the server closes the connection, which the client sees


async def _unless_gone(asking: Awaitable[Answer], receive: Receive) -> Answer:
    """``await asking``, unless the client disconnects first (then ClientGone, and ``asking`` is cancelled):
    a long generation is not worth finishing for nobody."""
    request = asyncio.ensure_future(asking)
    watcher = asyncio.ensure_future(receive())
    try:
        await asyncio.wait((request, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not request.done():
        request.cancel()
        raise ClientGone()
    return request.result()
