"""The router's HTTP/1.1 client for replicas: pooled keep-alive connections parsed with httptools.

Why not aiohttp's client: on the request path it cost 160 µs of CPU per request here, against 36 µs for
this one (bench/router_overhead measures the router as a whole) — most of the router's own time. The
router needs a small part of HTTP from its upstreams: one request at a time per connection, a body it
already holds, an answer with a length or chunked, keep-alive. httptools (llhttp, the parser uvicorn
reads requests with) does the parsing; this module only pools connections and keeps the retry rule.

The retry rule (RFC 9112 §9.3.1: a request may be sent again only when it is known not to have been
processed) is what the caller builds on:
- :class:`Unreachable`: the connection could not be made, nothing was sent; retrying elsewhere is safe.
- :class:`Dropped`: the connection ended (or the answer was not HTTP) after the request was written;
  the replica may have acted on it, so it is never re-sent.
- ``TimeoutError``: no complete answer before the deadline (connecting included).

A pooled connection the replica has closed is never written to: the event loop may not have read the
replica's FIN yet when the connection is taken again, so before reuse its socket is polled, and one with
anything to read (an idle HTTP/1.1 connection never has: it is the FIN, a reset or garbage) is dropped
for a fresh one. Idle connections are closed after ``keepalive_timeout`` seconds, which is shorter than
a replica's own (uvicorn's 5 s), so a replica never closes a connection the router is about to reuse.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The exchange with a replica failed; the subclass says whether the request may be sent again."""


class Unreachable(UpstreamError):
    """No connection could be made: nothing was sent."""


class Dropped(UpstreamError):
    """The connection ended, or the answer was not HTTP, after the request was written."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Headers
    """As received, names lower-cased, hop-by-hop headers included (the proxy decides what passes)."""
    body: bytes
    stream: Stream | None = None
    """The body still to come, for a streamed answer (``body`` is then empty)."""


class Stream:
    """The body of a streamed answer, as the replica writes it. The reader must end with :meth:`close`
    (or :meth:`abort`): a stream left before its end takes its connection down with it."""

    #: Bytes waiting for the reader before the socket stops being read.
    HIGH_WATER = 256 * 1024

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self._pending: list[bytes] = []
        self._size = 0
        self._paused = False
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.on_end: Callable[[], None] | None = None
        """Called when the whole body has arrived (the pool takes the connection back)."""

    # -- fed by the connection ----------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size > self.HIGH_WATER and not self._paused and self._connection is not None:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._connection = None
        self._wake()
        if self.on_end is not None:
            self.on_end()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._ended:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _timeout(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError())

    # -- the reader ---------------------------------------------------------------------------------
    async def read(self, deadline: float | None = None) -> bytes:
        """What has arrived since the last read (waiting for it until the loop time ``deadline``); ``b""``
        at the end. Raises Dropped when the replica broke off, TimeoutError past the deadline."""
        while not self._pending:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, self._timeout) if deadline is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if self._paused and self._connection is not None:
            self._paused = False
            self._connection.resume()
        return data

    def abort(self, exc: BaseException | None = None) -> None:
        """Stop here: the upstream connection is closed at once (the replica sees its client go)."""
        if exc is not None:
            self._fail(exc)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.abort()

    def close(self) -> None:
        """The reader is done; a body not yet complete ends its connection."""
        if not self._ended:
            self.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a replica, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[Answer] | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._headers: Headers = []
        self._chunks: list[bytes] = []
        self._head_request = False
        self._headed = False
        self._unasked = False
        self._poller: select.poll | None = None
        self._stream: Stream | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poller = select.poll()  # not select(): a busy router's descriptors pass FD_SETSIZE
            self._poller.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if (self.answer is None or self.answer.done()) and self._stream is None:  # nothing was asked: unusable
            self.reusable = False
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Dropped(f"not an HTTP answer ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._stream is not None:
            stream, self._stream = self._stream, None
            if self._framed():
                stream._fail(Dropped("the replica closed the connection in the middle of its answer"))
            else:
                stream._end()  # an answer delimited by the close
        elif self.answer is not None and not self.answer.done():
            if self._headed and not self._framed():  # an answer delimited by the close
                self._complete()
            else:
                self._fail(Dropped("the replica closed the connection before answering"))

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.answer is None or self.answer.done():  # a second answer to one request: the stream is off
            self.reusable = False
            self._unasked = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._unasked:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._unasked:
            return
        self._headed = True
        if self._head_request:  # no body follows, whatever its headers announce; never reused
            self.reusable = False
            self._complete()
        elif self._streamed():
            assert self.answer is not None
            self._stream = Stream(self)
            self.answer.set_result(Answer(self.parser.get_status_code(), self._headers, b"", self._stream))

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream._feed(body)
        elif not self._unasked:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._stream is not None:
            self.reusable = self.parser.should_keep_alive()
            stream, self._stream = self._stream, None
            stream._end()
        elif self.answer is not None and not self.answer.done():
            self.reusable = self.parser.should_keep_alive()
            self._complete()

    # -- one exchange -------------------------------------------------------------------------------
    def _framed(self) -> bool:
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self._headers)

    def _streamed(self) -> bool:
        """A successful answer whose length is not known ahead: handed over as a stream."""
        if self.parser.get_status_code() >= 400:
            return False  # an error is read whole: the proxy may have to rewrite it
        for name, value in self._headers:
            if name == b"content-length":
                return False
            if name == b"content-type" and value.startswith(b"text/event-stream"):
                return True
        return True  # chunked, or delimited by the close

    def _complete(self) -> None:
        assert self.answer is not None
        self.answer.set_result(Answer(self.parser.get_status_code(), self._headers, b"".join(self._chunks)))
        self._headers, self._chunks = [], []

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)
        self.abort()

    def send(self, head: bytes, body: bytes, head_request: bool) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._headers, self._chunks, self._head_request, self._headed = [], [], head_request, False
        self._unasked = False
        self.reusable = False
        self.answer = asyncio.get_running_loop().create_future()
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self.answer

    def expire(self) -> None:
        """The deadline passed: fail the exchange with TimeoutError and close the connection."""
        self._fail(TimeoutError())

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def readable(self) -> bool:
        """Anything to read on an idle connection: the replica closed it (or sent garbage)."""
        return self._poller is not None and bool(self._poller.poll(0))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections per replica address, reused last-in first-out (the warmest first)."""

    def __init__(self, connect_timeout: float, keepalive_timeout: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def _pooled(self, address: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed or now - connection.idle_since > self.keepalive_timeout or connection.readable():
                connection.abort()
                continue
            return connection
        return None

    async def _connect(self, address: tuple[str, int], deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = min(self.connect_timeout, max(0.0, deadline - loop.time()))
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, address[0], address[1]), timeout)
        except OSError as exc:
            raise Unreachable(str(exc)) from None
        return connection

    async def request(self, address: tuple[str, int], head: bytes, body: bytes, timeout: float,
                      *, start_timeout: float | None = None, head_request: bool = False) -> Answer:
        """Send one request (``head``: request line and headers, ``body``: its bytes) and read the answer
        within ``timeout`` seconds, its head within ``start_timeout``; raises Unreachable, Dropped or
        TimeoutError. A streamed answer is returned when its head is in: its reader keeps the deadlines."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self._pooled(address) or await self._connect(address, deadline)
        answer = connection.send(head, body, head_request)
        timer: asyncio.TimerHandle | None = None

        def expire() -> None:
            nonlocal timer
            if connection._headed and loop.time() < deadline:  # the head came in time; now the whole answer
                timer = loop.call_at(deadline, connection.expire)
            else:
                connection.expire()

        start = deadline if start_timeout is None else min(deadline, loop.time() + start_timeout)
        timer = loop.call_at(start, expire)
        try:
            result = await answer
        except BaseException:  # failed, timed out, or the caller was cancelled mid-exchange
            connection.abort()
            raise
        finally:
            timer.cancel()
        if result.stream is not None:
            result.stream.on_end = lambda: self._give_back(address, connection)
            if result.stream._ended:
                self._give_back(address, connection)
            return result
        self._give_back(address, connection)
        return result

    def _give_back(self, address: tuple[str, int], connection: _Connection) -> None:
        if connection.reusable and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(address, []).append(connection)
        else:
            connection.abort()

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()
