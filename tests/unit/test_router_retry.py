"""The router's retry rule, with the real app and proxy, a real upstream, and a backend double."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from aiohttp import web

from fnserve.manifest import parse_function
from fnserve.records import Revision
from fnserve.router.app import create_app
from fnserve.settings import Settings
from tests.conftest import free_port
from tests.unit.doubles import NoTraining, ScriptedServing
from tests.unit.test_manifest import with_change


async def call(tmp_path: Path, urls: list[str]) -> tuple[httpx.Response, ScriptedServing]:
    backend = ScriptedServing(urls)
    app = create_app(Settings(state_dir=tmp_path), backend, NoTraining())  # type: ignore[arg-type]
    function = parse_function(with_change("spec.auth", {"public": True}))  # auth is tested elsewhere
    app.state.services.functions.table["sentiment"] = Revision(function, 1, tmp_path, tmp_path, time.time())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
            response = await client.post("/v1/models/sentiment:predict", json={"instances": ["x"]})
    return response, backend


async def upstream() -> tuple[web.AppRunner, str]:
    async def predict(request: web.Request) -> web.Response:
        return web.json_response({"predictions": ["ok"], "got": await request.json()})

    app = web.Application()
    app.router.add_post("/v1/models/{tail:.*}", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def test_refused_connection_is_retried_once_on_another_replica(tmp_path: Path) -> None:
    async def scenario() -> tuple[httpx.Response, ScriptedServing, str, str]:
        runner, good = await upstream()
        refused = f"http://127.0.0.1:{free_port()}"
        try:
            response, backend = await call(tmp_path, [refused, good])
        finally:
            await runner.cleanup()
        return response, backend, refused, good

    response, backend, refused, good = asyncio.run(scenario())
    assert response.status_code == 200
    assert response.json() == {"predictions": ["ok"], "got": {"instances": ["x"]}}  # the body, sent again
    assert backend.unreachable_seen == [refused]
    assert backend.released == [refused, good]


def test_a_second_refusal_answers_503(tmp_path: Path) -> None:
    refused = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    response, backend = asyncio.run(call(tmp_path, list(refused)))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "is not reachable" in response.json()["error"]
    assert backend.unreachable_seen == refused


class ClosingUpstream:
    """A raw HTTP/1.1 server that answers and then, when the body asks, closes the connection without a
    ``Connection: close`` (what uvicorn did after an exception); with ``hang`` it reads the request and
    closes without answering (a replica that dies mid-request). Counts the requests it read."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length)
            self.seen.append(body)
            if b"hang" in body:
                break
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n'
                         b'{"predictions":1}')
            await writer.drain()
            if b"close" in body:
                break
        writer.close()

    async def start(self) -> tuple[asyncio.base_events.Server, str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def calls(tmp_path: Path, url: str, bodies: list[dict]) -> list[httpx.Response]:
    backend = ScriptedServing([url] * len(bodies))
    app = create_app(Settings(state_dir=tmp_path), backend, NoTraining())  # type: ignore[arg-type]
    function = parse_function(with_change("spec.auth", {"public": True}))
    app.state.services.functions.table["sentiment"] = Revision(function, 1, tmp_path, tmp_path, time.time())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
            return [await client.post("/v1/models/sentiment:predict", json=body) for body in bodies]


def test_a_connection_the_replica_closed_after_answering_is_not_reused(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[httpx.Response], list[bytes]]:
        upstream = ClosingUpstream()
        server, url = await upstream.start()
        async with server:
            responses = await calls(tmp_path, url, [{"instances": ["close"]}, {"instances": ["next"]}] * 20)
        return responses, upstream.seen

    responses, seen = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 40  # the next request never met the dead connection
    assert len(seen) == 40  # each request reached the upstream exactly once


def test_a_request_the_replica_read_and_dropped_is_not_sent_again(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[httpx.Response], list[bytes]]:
        upstream = ClosingUpstream()
        server, url = await upstream.start()
        async with server:
            responses = await calls(tmp_path, url, [{"instances": ["warm"]}, {"instances": ["hang"]}])
        return responses, upstream.seen

    responses, seen = asyncio.run(scenario())
    assert responses[0].status_code == 200
    assert responses[1].status_code == 503 and responses[1].headers["retry-after"] == "1"
    assert "closed the connection before answering" in responses[1].json()["error"]
    assert [b for b in seen if b"hang" in b] == [b'{"instances":["hang"]}']  # sent once: it may have been acted on
