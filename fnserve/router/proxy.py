"""Forwarding one request to a replica through a pooled aiohttp session.

Bodies pass through untouched (binary tensor bodies and compressed bodies too: auto-decompression is
off). Hop-by-hop headers are dropped both ways. An error answer that is not the platform's shape (JSON
with a string ``"error"``) — from a replica of another make, or a server layer below one — is rewritten
into it, keeping its status; FastAPI's 422 for an unreadable body becomes the 400 it is.

The retry rule (RFC 9112 §9.3.1: a request may be sent again only when it is known not to have been
processed):
- A pooled connection the replica has closed is never written to. aiohttp notices a closed connection
  only once its event loop has read the replica's FIN, which can be after the connection went back to
  the pool and was taken again; so before a pooled connection is reused its socket is polled, and one
  with anything to read (an idle HTTP/1.1 connection never has: it is the FIN, a reset or garbage) is
  dropped for a fresh one. The request itself is sent once.
- A connection that could not be made raises UpstreamUnreachable; nothing was sent, so the caller
  retries once on another replica.
- Anything that fails after the request was written — the replica died mid-request, or closed without
  answering — is not retried, since the replica may have acted on it: 503 with Retry-After; no answer in
  time is 504.
"""

from __future__ import annotations

import asyncio
import json
import select
import time

import aiohttp
from aiohttp.client_proto import ResponseHandler
from starlette.requests import Request
from starlette.responses import Response

from fnserve.backends.base import Endpoint
from fnserve.router.errors import error_response, request_id

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
# Set again by aiohttp (request) or Starlette/uvicorn (response) for the new hop.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server"}
_JSON_BY_DEFAULT = ("", "application/x-www-form-urlencoded")


def _connection_named(headers: list[tuple[str, str]]) -> set[str]:
    """Headers a Connection header declares hop-by-hop for this hop."""
    named: set[str] = set()
    for key, value in headers:
        if key.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(","))
    return named


def upstream_headers(request: Request, *, json_default: bool) -> list[tuple[str, str]]:
    items = request.headers.items()
    drop = _REQUEST_DROP | _connection_named(items)
    headers = [(k, v) for k, v in items if k not in drop and k != "x-request-id"]
    headers.append(("x-request-id", request_id(request)))
    keys = {k for k, _ in headers}
    if "accept-encoding" not in keys:
        headers.append(("accept-encoding", "identity"))  # never compress what the client can't read
    if json_default and request.headers.get("content-type", "") in _JSON_BY_DEFAULT \
            and "inference-header-content-length" not in keys:
        # `curl -d '{...}'` labels JSON as a form; KServe would then read it as binary tensors.
        headers = [(k, v) for k, v in headers if k != "content-type"] + [("content-type", "application/json")]
    return headers


class _PolledResponseHandler(ResponseHandler):
    """aiohttp's connection protocol, reporting a pooled connection as gone as soon as its socket is."""

    def is_connected(self) -> bool:  # aiohttp asks this only of idle connections it may reuse or expire
        if not super().is_connected():
            return False
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return True
        poller = select.poll()  # not select(): a busy router's descriptors run past FD_SETSIZE (1024)
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)


def _polling_connector() -> aiohttp.TCPConnector:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=30)
    loop = asyncio.get_running_loop()
    connector._factory = lambda: _PolledResponseHandler(loop=loop)  # the one protocol factory aiohttp uses
    return connector


def _error_message(status: int, content: bytes, content_type: str) -> str | None:
    """The replacement message for an upstream error body not in the platform's shape (None: it is)."""
    if "json" in content_type:
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


class UpstreamUnreachable(Exception):
    """The replica refused or never accepted the connection: nothing was sent, so a retry is safe."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(f"function {endpoint.function!r}: replica {endpoint.replica} is not reachable")
        self.endpoint = endpoint


class Proxy:
    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=_polling_connector(), auto_decompress=False,
                                              skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: Request, endpoint: Endpoint, timeout: float, *,
                      json_default: bool = False, path: str | None = None) -> Response:
        """Send the request to ``endpoint`` (at ``path``, default the request's own) and return its answer."""
        assert self._session is not None, "Proxy.start() was not called"
        query = request.scope["query_string"]
        url = endpoint.url + (path or request.scope["path"]) + (f"?{query.decode('latin-1')}" if query else "")
        body = await request.body()
        limits = self._timeouts.get(timeout)
        if limits is None:
            limits = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout)
        sent = time.perf_counter()
        try:
            async with self._session.request(request.method, url, data=body or None, timeout=limits,
                                             headers=upstream_headers(request, json_default=json_default),
                                             allow_redirects=False) as upstream:
                content = await upstream.read()
                request.scope.setdefault("state", {})["upstream_ms"] = (time.perf_counter() - sent) * 1000
                if upstream.status >= 400:
                    message = _error_message(upstream.status, content, upstream.headers.get("content-type", ""))
                    if message is not None:
                        return error_response(request, 400 if upstream.status == 422 else upstream.status,
                                              message)
                response = Response(content, status_code=upstream.status)
                drop = _RESPONSE_DROP | _connection_named(list(upstream.headers.items()))
                response.raw_headers.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                                            for k, v in upstream.headers.items() if k.lower() not in drop)
                return response
        except asyncio.TimeoutError:
            return error_response(request, 504, f"function {endpoint.function!r} did not answer within "
                                                f"{timeout:g} s")
        except aiohttp.ClientConnectorError:
            raise UpstreamUnreachable(endpoint) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            return error_response(request, 503, f"function {endpoint.function!r}: replica closed the "
                                                f"connection before answering", retry_after=1)
