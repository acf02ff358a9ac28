"""Forwarding one invocation to a replica and writing its answer back, as raw ASGI messages.

Bodies pass through untouched (binary tensor bodies and compressed bodies too: nothing is decoded).
Hop-by-hop headers are dropped both ways. An error answer that is not the platform's shape (JSON with a
string ``"error"``) — from a replica of another make, or a server layer below one — is rewritten into
it, keeping its status; FastAPI's 422 for an unreadable body becomes the 400 it is.

The retry rule is the upstream client's (router/upstream.py): :class:`Unreachable` means nothing was
sent, so the caller may try another replica; :class:`Dropped` (the replica closed the connection, or
answered with something that is not HTTP, after the request was written) is never re-sent — the caller
answers 503 with Retry-After; no answer in time is a 504, answered here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Send

from fnserve.router.errors import error_body
from fnserve.router.invocation import Headers, Invocation
from fnserve.router.upstream import Unreachable, UpstreamPool

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
                  *, json_default: bool) -> bytes:
    """The request line and headers for the replica: the client's, less the hop's own, plus ours."""
    drop = _REQUEST_DROP | _connection_named(headers)
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
    lines.append(b"x-request-id: %s\r\ncontent-length: %d\r\n\r\n" % (request_id.encode("latin-1"), body_length))
    return b"".join(lines)


def _error_message(status: int, content: bytes, content_type: bytes) -> str | None:
    """The replacement message for an upstream error body not in the platform's shape (None: it is)."""
    if b"json" in content_type:
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return None
        if isinstance(data, dict) and "detail" in data:
            detail = data["detail"]
            if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [...], "msg": "..."}, ...]
                return "invalid request: " + "; ".join(
                    f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg', '')}" if isinstance(d, dict) else str(d)
                    for d in detail[:5])
            return str(detail)
    return content.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {status} with an empty body"


async def respond(invocation: Invocation, send: Send, status: int, headers: Headers, body: bytes) -> None:
    """Write the answer, with the invocation's own headers added, and note its status."""
    invocation.status = status
    headers += invocation.headers
    if invocation.cold_start_ms is not None:
        headers.append((b"x-fnserve-cold-start", b"%.0f" % invocation.cold_start_ms))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(invocation: Invocation, send: Send, status: int, message: str, *,
                        retry_after: int | None = None, headers: Mapping[str, str] | None = None,
                        fields: Mapping[str, Any] | None = None) -> None:
    """The platform's error shape as the invocation's answer."""
    raw = [_JSON]
    if retry_after is not None:
        raw.append((b"retry-after", str(retry_after).encode()))
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    await respond(invocation, send, status, raw, error_body(message, invocation.request_id, fields))


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
                      url: str, replica: str, timeout: float, send: Send) -> None:
        """Send the request to the replica at ``url`` and write its answer to ``send``; raises Unreachable
        when no connection could be made, Dropped when the replica failed the request after it was sent
        (in both cases nothing was written to ``send``)."""
        host, port, netloc = self._address(url)
        target = invocation.upstream_path + (f"?{query.decode('latin-1')}" if query else "")
        head = upstream_head(method, target, netloc, headers, invocation.request_id, len(body),
                             json_default=invocation.action == "predict")
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            answer = await self.pool.request((host, port), head, body, timeout, head_request=method == "HEAD")
        except (TimeoutError, asyncio.TimeoutError):
            await respond_error(invocation, send, 504, f"function {invocation.function!r} did not answer within "
                                                       f"{timeout:g} s")
            return
        except Unreachable:
            raise Unreachable(f"function {invocation.function!r}: replica {replica} is not reachable") from None
        invocation.upstream_ms = (loop.time() - sent) * 1000
        status = answer.status
        if status >= 400:
            content_type = next((v for k, v in answer.headers if k == b"content-type"), b"")
            message = _error_message(status, answer.body, content_type)
            if message is not None:
                await respond_error(invocation, send, 400 if status == 422 else status, message)
                return
        drop = _RESPONSE_DROP | _connection_named(answer.headers)
        await respond(invocation, send, status, [(k, v) for k, v in answer.headers if k not in drop], answer.body)
