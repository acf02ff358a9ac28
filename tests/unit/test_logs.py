"""Log lines as a log pipeline and a person read them, and replica log files rotated and tidied."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnserve import logs, tracing
from fnserve.backends.local import replica_logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_the_request_ids_of_the_request_being_handled(captured: io.StringIO) -> None:
    logs.configure("info", "json", "router", stream=captured)
    token = logs.CURRENT.set(logs.RequestContext("req-1", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
    try:
        logging.getLogger("fnserve.router").warning("replica %s is slow", "r-1")
        logging.getLogger(logs.ACCESS_LOGGER).info("POST /x 200", extra={"fields": {"status": 200, "key_id": None}})
    finally:
        logs.CURRENT.reset(token)
    logging.getLogger("fnserve.router").info("between requests")
    first, access, outside = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["message"] == "replica r-1 is slow" and first["level"] == "warning"
    assert (first["request_id"], first["trace_id"], first["component"]) == \
        ("req-1", "0af7651916cd43dd8448eb211c80319c", "router")
    assert access["status"] == 200 and access["key_id"] is None and access["request_id"] == "req-1"
    assert "request_id" not in outside and "trace_id" not in outside
    assert first["time"].endswith("Z")


def test_text_lines_read_as_a_sentence_then_the_fields(captured: io.StringIO) -> None:
    logs.configure("warning", "text", "replica", stream=captured)
    token = logs.CURRENT.set(logs.RequestContext("req-2"))
    try:
        logging.getLogger(logs.ACCESS_LOGGER).info("GET /v2 200 1.0 ms",
                                                   extra={"fields": {"path": "/v2", "duration_ms": 1.04,
                                                                     "client": "a b"}})
        logging.getLogger("fnserve.router").info("not at warning level")
    finally:
        logs.CURRENT.reset(token)
    (line,) = captured.getvalue().splitlines()  # the access log is not silenced by the level
    assert " INFO fnserve.access: GET /v2 200 1.0 ms request_id=req-2 path=/v2 duration_ms=1.0 client=\"a b\"" in line


def test_the_access_line_has_the_format_of_every_line_and_can_be_turned_off(captured: io.StringIO) -> None:
    logs.configure("info", "json", "router", stream=captured)
    token = logs.CURRENT.set(logs.RequestContext("req-3", "0af7651916cd43dd8448eb211c80319c"))
    try:
        logs.ACCESS.write("GET /v2 200 0.4 ms", {"status": 200, "path": "/v2"})  # no event loop: written now
    finally:
        logs.CURRENT.reset(token)
    line = json.loads(captured.getvalue())
    assert line["logger"] == logs.ACCESS_LOGGER and line["message"] == "GET /v2 200 0.4 ms"
    assert (line["request_id"], line["trace_id"], line["status"]) == ("req-3", "0af7651916cd43dd8448eb211c80319c", 200)
    assert "span_id" not in line  # none known: left out, not null

    off = io.StringIO()
    logs.configure("info", "json", "router", access_log=False, stream=off)
    assert not logs.ACCESS.enabled
    logs.ACCESS.write("GET / 200", {})
    assert off.getvalue() == ""


def test_access_lines_written_in_an_event_loop_are_gathered_then_flushed(captured: io.StringIO) -> None:
    logs.configure("info", "text", "router", stream=captured)

    async def requests() -> tuple[str, str]:
        for number in range(3):
            logs.ACCESS.write(f"GET /{number} 200", {})
        before = captured.getvalue()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while captured.getvalue().count("\n") < 3 and loop.time() < deadline:  # flushed within the window
            await asyncio.sleep(0.01)
        return before, captured.getvalue()

    before, after = asyncio.run(requests())
    assert before == ""
    assert [line.split(": ", 1)[1] for line in after.splitlines()] == ["GET /0 200", "GET /1 200", "GET /2 200"]


@pytest.mark.parametrize(("level", "fmt", "message"), [
    ("loud", "text", "FNSERVE_LOG_LEVEL='loud' is not one of debug, info, warning, error, critical"),
    ("info", "xml", "FNSERVE_LOG_FORMAT='xml' is not one of text, json"),
])
def test_an_unknown_level_or_format_is_named(level: str, fmt: str, message: str) -> None:
    with pytest.raises(logs.LogSettingError, match=message.replace("(", r"\(")):
        logs.check(level, fmt)


def test_a_followed_log_gives_whole_lines_and_starts_again_after_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "fn-00001-ab12.log"
    log.write_bytes(b"one\ntw")
    chunk, offset = replica_logs._complete_lines(log, 0)
    assert (chunk, offset) == (b"one\n", 4)  # half a line waits for its end
    with log.open("ab") as handle:
        handle.write(b"o\n")
    assert replica_logs._complete_lines(log, offset) == (b"two\n", 8)
    replica_logs.rotate(log)
    assert (tmp_path / "fn-00001-ab12.log.1").read_bytes() == b"one\ntwo\n" and log.read_bytes() == b""
    with log.open("ab") as handle:
        handle.write(b"3\n")
    assert replica_logs._complete_lines(log, 8) == (b"3\n", 2)


def test_tidy_keeps_what_is_written_and_recent_and_removes_the_rest(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "fn"
    folder.mkdir()
    (tmp_path / "gone").mkdir()
    (tmp_path / "forkserver-onnx.log").write_text("kept\n")
    now = 1_000_000.0

    def log(path: Path, text: str | bytes, age: float) -> Path:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        os.utime(path, (now - age, now - age))
        return path

    big = log(folder / "fn-00002-aaaa.log", b"y" * 200, 0)  # a live replica of the serving revision
    ended = [log(folder / f"fn-00002-e{n:03d}.log", "ended\n", 10 * n) for n in range(1, 8)]  # its ended ones
    log(folder / "fn-00001-bbbb.log", "old\n", 600)  # a revision replaced ten minutes ago
    log(folder / "fn-00001-bbbb.log.1", "older\n", 600)
    failed = log(folder / "fn-00003-cccc.log", "why the deploy failed\n", 5)  # a failed deploy's, just now
    draining = log(folder / "fn-00001-dddd.log", "draining\n", 900)
    log(tmp_path / "gone" / "gone-00001-aaaa.log", "x\n", 600)
    due = replica_logs.tidy(tmp_path, {"fn": {"fn-00002"}}, live={big, draining}, max_bytes=100, grace=120,
                             now=now)
    assert due == [big]  # rotated by the caller, off the event loop
    kept = {p.name for p in folder.iterdir()}
    assert kept == {big.name, draining.name, failed.name, *(p.name for p in ended[:replica_logs.KEEP_ENDED])}
    assert not (tmp_path / "gone").exists() and (tmp_path / "forkserver-onnx.log").exists()
    replica_logs.rotate_all(due)
    assert big.read_bytes() == b"" and (folder / "fn-00002-aaaa.log.1").read_bytes() == b"y" * 200


def test_a_client_chosen_value_cannot_forge_a_text_line_or_field(captured: io.StringIO) -> None:
    logs.configure("info", "text", "router", stream=captured)
    token = logs.CURRENT.set(logs.RequestContext("id\tstatus=200"))
    try:
        path = "/v1/models/x\n2026-12-06T00:00:00.000Z INFO fnserve.access: GET /admin 200"
        logs.ACCESS.write(f"GET {path} 404 0.1 ms", {"path": path, "status": 404, "key_id": 'a"b'})
    finally:
        logs.CURRENT.reset(token)
    (line,) = captured.getvalue().splitlines()
    assert 'request_id="id\\tstatus=200"' in line and 'key_id="a\\"b"' in line
    assert line.count(" status=") == 1 and "x\\n2026" in line


@pytest.mark.parametrize(("header", "trace_id"), [
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", "4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff is invalid
    (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    (b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case is not the grammar
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", None),  # version 00 has four parts
])
def test_only_a_valid_traceparent_names_a_trace(header: bytes, trace_id: str | None) -> None:
    assert tracing.client_trace_id([(b"traceparent", header)]) == trace_id
