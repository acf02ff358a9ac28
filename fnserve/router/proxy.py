"""Forwarding one request to a replica through a pooled aiohttp session.

Bodies pass through untouched (binary tensor bodies and compressed bodies too: auto-decompression is
off). Hop-by-hop headers are dropped both ways. Failures map to what a client can act on: replica went
away mid-request → 503 with Retry-After, no answer in time → 504; a connection that could not even be
made raises UpstreamUnreachable, which the caller may retry elsewhere since nothing was sent.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
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
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: Request, endpoint: Endpoint, timeout: float, *,
                      json_default: bool = False) -> Response:
        assert self._session is not None, "Proxy.start() was not called"
        query = request.scope["query_string"]
        url = endpoint.url + request.scope["path"] + (f"?{query.decode('latin-1')}" if query else "")
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
