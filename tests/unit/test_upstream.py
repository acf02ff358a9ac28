"""The router's upstream HTTP/1.1 client (UpstreamPool) against small raw servers on 127.0.0.1: keep-alive
reuse, answers that end their connection, chunked and close-delimited bodies, HEAD, and the retry rule's
three failures — Unreachable (nothing sent), Dropped (sent, then the connection ended), TimeoutError —
plus the check that a pooled connection the replica closed is never written to.

The servers are asyncio stream servers in the test's own loop, except where the point is that the loop
has not yet read the replica's FIN: that server runs in a thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from fnserve.router import upstream as upstream_module
from fnserve.router.upstream import Dropped, Unreachable, UpstreamPool
from tests.conftest import free_port

T = TypeVar("T")
Address = tuple[str, int]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def head(method: str, path: str, body: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nhost: replica\r\ncontent-length: %d\r\n\r\n" % (method.encode(), path.encode(),
                                                                              len(body))


class Served:
    """An asyncio stream server on a free loopback port while in its ``async with``; ``handle`` answers."""

    server: asyncio.base_events.Server | None = None
    address: Address = ("127.0.0.1", 0)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self: T) -> T:
        assert isinstance(self, Served)
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.address = ("127.0.0.1", self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


class RawServer(Served):
    """Answers by path: ``/close`` says Connection: close (and keeps the connection open), ``/chunked``
    answers in chunks, ``/until-close`` delimits its body by closing, ``/hang`` reads and never answers,
    ``/drop`` reads and closes, ``/garbage`` is not HTTP, HEAD announces a body it does not send; anything
    else echoes its path and body with a Content-Length. Counts connections opened and ended."""

    def __init__(self) -> None:
        self.connections = 0
        self.ended = 0
        self.requests: list[tuple[int, str, bytes]] = []  # (connection number, path, body)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while await self.exchange(number, reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended += 1
            writer.close()

    async def exchange(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; False: the connection ends here."""
        request = await reader.readuntil(b"\r\n\r\n")
        method, path, _ = request.split(b"\r\n", 1)[0].decode().split(" ")
        length = next((int(line.split(b":")[1]) for line in request.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append((number, path, body))
        if method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose")
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in (b"hello, ", b"chunked", b" world"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
            await writer.drain()
            return False
        elif path == "/hang":
            await reader.read()  # until the client goes away
            return False
        elif path == "/drop":
            return False
        elif path == "/garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        elif path == "/two":  # an answer, and in the same write one nobody asked for
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                         b"HTTP/1.1 500 Oops\r\nx-stale: yes\r\ncontent-length: 5\r\n\r\nstale")
        else:
            answer = path.encode() + b":" + body
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        return True


async def get(pool: UpstreamPool, server: RawServer, path: str, body: bytes = b"", timeout: float = 5.0,
              method: str = "POST") -> upstream_module.Answer:
    return await pool.request(server.address, head(method, path, body), body, timeout,
                              head_request=method == "HEAD")


async def until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_sequential_requests_share_one_keep_alive_connection() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answers = [await get(pool, server, f"/r{i}", b"body %d" % i) for i in range(20)]
            assert [a.body for a in answers] == [b"/r%d:body %d" % (i, i) for i in range(20)]
            assert all(a.status == 200 and a.headers == [(b"content-length", str(len(a.body)).encode())]
                       for a in answers)
            assert server.connections == 1
            pool.close()
            await until(lambda: server.ended == 1, "the idle connection closed by pool.close()")

    run(scenario())


def test_concurrent_requests_each_get_a_connection_and_all_are_kept() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answers = await asyncio.gather(*(get(pool, server, f"/c{i}") for i in range(4)))
            assert sorted(a.body for a in answers) == [b"/c%d:" % i for i in range(4)]
            assert server.connections == 4
            await asyncio.gather(*(get(pool, server, f"/d{i}") for i in range(4)))
            assert server.connections == 4  # the four idle ones were reused
            pool.close()

    run(scenario())


def test_an_answer_saying_connection_close_is_not_reused() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answers = [await get(pool, server, "/close") for _ in range(3)]
            assert [a.body for a in answers] == [b"close"] * 3
            assert server.connections == 3  # the server kept each open: the client chose not to reuse it
            assert (await get(pool, server, "/after")).body == b"/after:"
            pool.close()

    run(scenario())


async def whole(answer: upstream_module.Answer) -> bytes:
    """A streamed answer's body, read to its end."""
    assert answer.stream is not None and answer.body == b""
    chunks = []
    while chunk := await answer.stream.read():
        chunks.append(chunk)
    answer.stream.close()
    return b"".join(chunks)


def test_a_chunked_answer_streams_and_its_connection_is_reused() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answer = await get(pool, server, "/chunked")
            assert answer.status == 200 and await whole(answer) == b"hello, chunked world"
            assert (b"transfer-encoding", b"chunked") in answer.headers
            assert (await get(pool, server, "/next")).body == b"/next:"
            assert server.connections == 1
            pool.close()

    run(scenario())


def test_an_answer_delimited_by_the_close_streams_to_its_end_and_is_not_reused() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answer = await get(pool, server, "/until-close")
            assert answer.status == 200 and await whole(answer) == b"all of it"
            assert (await get(pool, server, "/next")).body == b"/next:"
            assert server.connections == 2
            pool.close()

    run(scenario())


def test_a_head_answer_does_not_wait_for_the_body_it_announces() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answer = await get(pool, server, "/v1/models/f", method="HEAD", timeout=2.0)
            assert answer.status == 200 and answer.body == b""
            assert (b"content-length", b"100") in answer.headers
            assert (await get(pool, server, "/next")).body == b"/next:"  # no stray bytes read as the next answer
            pool.close()

    run(scenario())


def test_a_refused_connection_is_unreachable() -> None:
    async def scenario() -> None:
        pool = UpstreamPool(5.0)
        with pytest.raises(Unreachable):
            await pool.request(("127.0.0.1", free_port()), head("POST", "/x"), b"", 5.0)

    run(scenario())


def test_a_request_read_and_then_dropped_is_dropped_not_unreachable() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            await get(pool, server, "/warm")
            with pytest.raises(Dropped):
                await get(pool, server, "/drop", b"payload")
            assert [r[1:] for r in server.requests] == [("/warm", b""), ("/drop", b"payload")]  # read once
            assert (await get(pool, server, "/next")).body == b"/next:"
            assert server.connections == 2
            pool.close()

    run(scenario())


def test_an_answer_that_is_not_http_is_dropped() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            with pytest.raises(Dropped, match="not an HTTP answer"):
                await get(pool, server, "/garbage")
            assert (await get(pool, server, "/next")).body == b"/next:"
            assert server.connections == 2
            pool.close()

    run(scenario())


def test_no_answer_by_the_deadline_is_a_timeout_and_the_connection_is_closed() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await get(pool, server, "/hang", timeout=0.1)
            assert 0.1 <= time.monotonic() - started < 2.0
            await until(lambda: server.ended == 1, "the timed-out connection closed")
            assert (await get(pool, server, "/next")).body == b"/next:"
            assert server.connections == 2
            pool.close()

    run(scenario())


def test_a_caller_cancelled_mid_exchange_leaves_no_connection_behind() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            task = asyncio.ensure_future(get(pool, server, "/hang"))
            await until(lambda: len(server.requests) == 1, "the request to arrive")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: server.ended == 1, "the abandoned connection closed")
            assert (await get(pool, server, "/next")).body == b"/next:"
            pool.close()

    run(scenario())


def test_an_idle_connection_past_the_keepalive_timeout_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeTime:
        now = 100.0

        def monotonic(self) -> float:
            return self.now

    fake = FakeTime()
    monkeypatch.setattr(upstream_module, "time", fake)

    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0, keepalive_timeout=30.0)
            await get(pool, server, "/a")
            fake.now += 30.0
            await get(pool, server, "/b")
            assert server.connections == 1
            fake.now += 30.01
            await get(pool, server, "/c")
            assert server.connections == 2
            await until(lambda: server.ended == 1, "the expired connection closed")
            pool.close()

    run(scenario())


def test_a_pooled_connection_the_replica_closed_is_not_written_to() -> None:
    """The replica closes its idle connection; the event loop has not run since, so only the poll before
    reuse can tell. Writing the next request there would lose it (Dropped)."""
    listener = socket.create_server(("127.0.0.1", 0))
    address: Address = ("127.0.0.1", listener.getsockname()[1])
    first_closed = threading.Event()
    seen: list[tuple[int, bytes]] = []

    def replica() -> None:
        for number in (1, 2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while not data.endswith(b"\r\n\r\n"):
                    data += conn.recv(4096)
                seen.append((number, data.split(b"\r\n", 1)[0]))
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%d" % (len(str(number)), number))
                if number == 2:
                    conn.settimeout(5.0)
                    conn.recv(1)  # until the client closes
            if number == 1:
                first_closed.set()  # after the close: its FIN is on its way
        listener.close()

    thread = threading.Thread(target=replica, daemon=True)
    thread.start()

    async def scenario() -> None:
        pool = UpstreamPool(5.0)
        first = await pool.request(address, head("GET", "/one"), b"", 5.0)
        assert first.body == b"1"
        assert first_closed.wait(5.0)  # blocks the loop on purpose: it must not read the FIN first
        assert pool._idle[address][0].closed is False  # so the pool does not know yet
        second = await pool.request(address, head("GET", "/two"), b"", 5.0)
        assert second.body == b"2"
        pool.close()

    run(scenario())
    thread.join(5.0)
    assert seen == [(1, b"GET /one HTTP/1.1"), (2, b"GET /two HTTP/1.1")]


def test_bytes_after_an_answer_neither_change_it_nor_keep_its_connection() -> None:
    async def scenario() -> None:
        async with RawServer() as server:
            pool = UpstreamPool(5.0)
            answer = await get(pool, server, "/two")
            assert answer.status == 200 and answer.body == b"ok"
            assert answer.headers == [(b"content-length", b"2")]
            assert (await get(pool, server, "/next")).body == b"/next:"
            assert server.connections == 2  # a connection that sent what nobody asked for is not reused
            pool.close()

    run(scenario())


class TickServer(Served):
    """A replica streaming an event every ``interval`` seconds, ``count`` of them, on a chunked answer;
    ``/stall`` sends its head and then nothing; ``/late`` waits ``interval`` before its head; ``/cut``
    sends two events and closes mid-body. Records whether each connection saw its client go."""

    def __init__(self, interval: float = 0.05, count: int = 5) -> None:
        self.interval, self.count = interval, count
        self.gone = asyncio.Event()
        self.written = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1]
        if path == b"/late":
            await asyncio.sleep(self.interval)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            for i in range(0 if path == b"/stall" else 2 if path == b"/cut" else self.count):
                event = b"data: %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                self.written += 1
                await asyncio.sleep(self.interval)
            if path == b"/stall":
                await reader.read()  # until the client goes away
                self.gone.set()
            elif path != b"/cut":
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                await reader.read()
        except ConnectionError:
            self.gone.set()
        finally:
            writer.close()


def test_a_stream_hands_each_event_over_as_it_is_written() -> None:
    async def scenario() -> None:
        async with TickServer(interval=0.05, count=5) as server:
            pool = UpstreamPool(5.0)
            started = time.perf_counter()
            answer = await get(pool, server, "/ticks")
            assert answer.stream is not None
            arrivals, body = [], b""
            while chunk := await answer.stream.read():
                arrivals.append(time.perf_counter() - started)
                body += chunk
            answer.stream.close()
            assert body == b"".join(b"data: %d\n\n" % i for i in range(5))
            assert len(arrivals) >= 4, arrivals  # one read per event, not one at the end
            assert arrivals[0] < arrivals[-1] - 0.1, arrivals
            pool.close()

    run(scenario())


def test_a_stream_left_early_closes_its_upstream_connection_at_once() -> None:
    async def scenario() -> None:
        async with TickServer(interval=0.05, count=1000) as server:
            pool = UpstreamPool(5.0)
            answer = await get(pool, server, "/ticks")
            assert answer.stream is not None
            assert await answer.stream.read()
            answer.stream.abort()
            await asyncio.wait_for(server.gone.wait(), 2.0)  # the replica's next write finds no reader
            assert server.written < 100
            pool.close()

    run(scenario())


def test_a_stream_that_pauses_too_long_times_out_and_one_cut_short_is_dropped() -> None:
    async def scenario() -> None:
        async with TickServer(interval=0.05) as server:
            pool = UpstreamPool(5.0)
            loop = asyncio.get_running_loop()
            answer = await get(pool, server, "/stall")
            assert answer.stream is not None
            with pytest.raises(TimeoutError):
                await answer.stream.read(loop.time() + 0.2)
            answer.stream.close()
            await asyncio.wait_for(server.gone.wait(), 2.0)
            answer = await get(pool, server, "/cut")
            assert answer.stream is not None
            with pytest.raises(Dropped):
                while await answer.stream.read(loop.time() + 2.0):
                    pass
            pool.close()

    run(scenario())


def test_the_response_start_timeout_bounds_the_head_only() -> None:
    async def scenario() -> None:
        async with TickServer(interval=0.3, count=2) as server:
            pool = UpstreamPool(5.0)
            address = server.address
            with pytest.raises(TimeoutError):
                await pool.request(address, head("GET", "/late"), b"", 5.0, start_timeout=0.1)
            answer = await pool.request(address, head("GET", "/ticks"), b"", 5.0, start_timeout=0.1)
            assert answer.stream is not None  # the head came at once; the events take longer than 0.1 s
            assert await whole(answer) == b"data: 0\n\ndata: 1\n\n"
            pool.close()

    run(scenario())


def test_a_reader_that_falls_behind_pauses_the_replica() -> None:
    async def scenario() -> None:
        big = b"x" * 65536
        written = [0]

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(200):  # 13 MB: far more than the sockets' buffers and the stream's high water
                writer.write(b"%x\r\n%s\r\n" % (len(big), big))
                await writer.drain()
                written[0] += 1
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
        pool = UpstreamPool(5.0)
        answer = await pool.request(("127.0.0.1", server.sockets[0].getsockname()[1]), head("GET", "/"), b"", 30.0)
        assert answer.stream is not None
        deadline = time.monotonic() + 5
        stalled_at, stalled_since = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - stalled_since < 0.3:  # until the writer blocks
            if written[0] != stalled_at:
                stalled_at, stalled_since = written[0], time.monotonic()
            await asyncio.sleep(0.01)
        assert written[0] < 100  # the replica was held back, not read into the router's memory
        first = await answer.stream.read()
        assert len(first) <= upstream_module.Stream.HIGH_WATER + 2 * 262144  # at most one read past the mark
        total = len(first)
        while chunk := await answer.stream.read():
            total += len(chunk)
        assert total == 200 * len(big)
        answer.stream.close()
        pool.close()
        server.close()

    run(scenario())
