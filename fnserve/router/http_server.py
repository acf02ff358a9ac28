"""The router's HTTP/1.1 connections: uvicorn's httptools protocol with a header deadline and JSON errors.

uvicorn answers a request it cannot parse (an unknown method, a malformed header or request line) with
a plain-text 400, and it has no deadline for a request's headers: its keep-alive timer is reset by
every byte, so a client trickling one header byte at a time (slowloris) holds a connection for ever,
and one that connects and sends nothing is never timed out at all. This protocol gives each request
``header_timeout`` seconds from its first byte (or from the connection's opening) to finish its
headers — whatever trickles in meanwhile — and answers every framing error in the platform's one error
shape. The body's deadline is the ASGI side's job (router/body.py), where the route reads it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _json_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; ``header_timeout`` is set on the class by :func:`protocol_with`."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_started = False

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._request_started:  # a request began and its headers never finished: say why it ends
            self.transport.write(_json_error(408, "Request Timeout", f"request headers not complete within "
                                                                     f"{self.header_timeout:g} s"))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()  # a connection that never sends a byte must not stay open

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_started = True
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        self._request_started = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._disarm_header_deadline()
        self.transport.write(_json_error(400, "Bad Request", f"malformed HTTP request: {msg.rstrip('.')} "
                                                             f"(unknown method, bad request line or header)"))
        self.transport.close()


def protocol_with(header_timeout: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with this header deadline."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"header_timeout": header_timeout})
