"""How the router learns that a replica it started is ready: the replica's ready pipe, not a poll.

A stand-in replica (a small Python process started through the real ``spawn`` launcher with the real
hand-over) never answers HTTP at all: it only does what the contract asks of it at the moment the test
tells it to (a signal). So the router can only have seen "ready" on the pipe, and the stand-in can tell
whether anybody knocked on its socket before it said so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fnserve.backends.local.processes import Handed, ProcessHandle, spawn
from fnserve.backends.local.replica import Replica, ReplicaFailed
from fnserve.manifest import parse_function
from fnserve.records import Revision
from fnserve.replica_contract import LISTEN_FD_ENV, READY_FD_ENV, ReadyPipe
from fnserve.settings import Settings
from tests.conftest import wait_until
from tests.unit.test_manifest import VALID

# Waits for SIGUSR1 (or exits at once with EXIT set), then: counts the connections already queued on its
# socket without accepting them, says "ready" with its timings, says "serving", and idles.
STAND_IN = f"""
import json, os, select, signal, socket, sys, time
started = time.time()
listener = socket.socket(fileno=int(os.environ[{LISTEN_FD_ENV!r}]))
ready = int(os.environ[{READY_FD_ENV!r}])
if os.environ.get("ORPHAN"):  # leave a process holding the pipe open behind (as a handler's helper might)
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(ready,), start_new_session=True)
if os.environ.get("EXIT"):
    sys.exit(3)
print("waiting", flush=True)
signal.sigwait({{signal.SIGUSR1}})
knocked = bool(select.select([listener], [], [], 0)[0])
print(f"knocked before ready: {{knocked}}", flush=True)
os.write(ready, json.dumps({{"event": "ready", "startedAt": started, "builtAt": started,
                             "loadedAt": time.time()}}).encode() + b"\\n")
os.write(ready, json.dumps({{"event": "serving", "at": time.time()}}).encode() + b"\\n")
os.close(ready)
signal.sigwait({{signal.SIGTERM}})
"""


def stand_in_launcher(extra_env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    async def launch(args: list[str], env: dict[str, str], cwd: Path, log_path: Path, fds: Handed) -> ProcessHandle:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})  # inherited: sigwait sees them
        try:
            return await spawn([sys.executable, "-c", STAND_IN], {**env, **(extra_env or {})}, cwd, log_path, fds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGTERM})
    return launch


def new_replica(tmp_path: Path) -> Replica:
    revision = Revision(parse_function(VALID), 1, tmp_path, tmp_path, time.time())
    return Replica(revision, tmp_path / "function.yaml", tmp_path / "logs")


def test_the_router_waits_on_the_ready_pipe_and_a_request_can_be_sent_before_the_server_accepts(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = new_replica(tmp_path)
        await replica.start(Settings(state_dir=tmp_path), stand_in_launcher())
        assert replica.process is not None and replica.port > 0
        await wait_until(lambda: "waiting" in replica.log_path.read_text(), 10, "the stand-in to start")
        waiting = asyncio.ensure_future(replica.wait_ready(timeout=30))
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done() and replica.state == "starting"

        # the router's socket is already listening for the replica: a request sent now is queued, not refused
        early = socket.create_connection(("127.0.0.1", replica.port), timeout=5)
        early.close()

        told = time.monotonic()
        os.kill(replica.process.pid, signal.SIGUSR1)
        await asyncio.wait_for(waiting, 5)
        heard_ms = (time.monotonic() - told) * 1000
        assert replica.state == "ready" and replica.times is not None
        assert replica.times.loaded_at <= replica.ready_at
        # heard as soon as it was written: no probe interval in between (a poll would add tens of ms)
        assert heard_ms < 500, heard_ms
        # the only connection it had was the test's own: the router never knocked to ask
        assert "knocked before ready: True" in replica.log_path.read_text()

        await replica.watch_serving()  # the rest of the pipe: "serving", then its end
        assert replica.serving_at >= replica.times.loaded_at
        await replica.stop(5)
        assert replica.process.returncode is not None

    asyncio.run(scenario())


def test_no_connection_is_made_to_a_replica_before_it_says_ready(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = new_replica(tmp_path)
        await replica.start(Settings(state_dir=tmp_path), stand_in_launcher())
        assert replica.process is not None
        await wait_until(lambda: "waiting" in replica.log_path.read_text(), 10, "the stand-in to start")
        waiting = asyncio.ensure_future(replica.wait_ready(timeout=30))
        await asyncio.sleep(0.2)  # not a wait for anything: the window in which a polling router would knock
        os.kill(replica.process.pid, signal.SIGUSR1)
        await asyncio.wait_for(waiting, 5)
        assert "knocked before ready: False" in replica.log_path.read_text()
        await replica.stop(5)

    asyncio.run(scenario())


def test_a_replica_that_exits_before_ready_fails_at_once_not_at_the_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = new_replica(tmp_path)
        await replica.start(Settings(state_dir=tmp_path), stand_in_launcher({"EXIT": "1"}))
        started = time.monotonic()
        with pytest.raises(ReplicaFailed, match="exited before its model was loaded"):
            await replica.wait_ready(timeout=60)
        assert time.monotonic() - started < 10

    asyncio.run(scenario())


def test_a_replica_that_exits_is_failed_even_if_a_process_it_left_holds_its_pipe(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = new_replica(tmp_path)
        await replica.start(Settings(state_dir=tmp_path), stand_in_launcher({"EXIT": "1", "ORPHAN": "1"}))
        started = time.monotonic()
        with pytest.raises(ReplicaFailed, match="exited before its model was loaded"):
            await replica.wait_ready(timeout=60)
        assert time.monotonic() - started < 10  # its exit, not the pipe's end (60 s away) nor the deadline

    asyncio.run(scenario())


def test_a_replica_stopped_while_it_is_launched_is_not_left_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = new_replica(tmp_path)
        launch = stand_in_launcher()

        async def slow_launch(*args: Any) -> ProcessHandle:  # a fork request queued behind a fork server's imports
            await replica.stop(5)  # `fnserve rm` meanwhile
            return await launch(*args)

        with pytest.raises(ReplicaFailed, match="stopped while it started"):
            await replica.start(Settings(state_dir=tmp_path), slow_launch)
        assert replica.process is not None
        await asyncio.wait_for(replica.process.wait(), 10)

    asyncio.run(scenario())


def test_the_ready_pipe_tells_a_replica_that_nobody_waits_for_it_any_more() -> None:
    read_end, write_end = os.pipe()
    pipe = ReadyPipe(write_end)
    assert pipe.send({"event": "ready"}) and os.read(read_end, 100) == b'{"event": "ready"}\n'
    os.close(read_end)  # the router gave up on it
    assert not pipe.send({"event": "ready"})  # and the replica exits (runtimes/server.py)
    assert ReadyPipe(None).send({"event": "ready"})  # no pipe (a container): nothing to tell


def test_the_router_keeps_no_copy_of_what_it_handed_over(tmp_path: Path) -> None:
    """Once launched, the socket and the pipe's write end live only in the replica: when it dies, its
    socket closes (a queued request is reset, not left hanging) and the pipe ends."""
    async def scenario() -> None:
        replica = new_replica(tmp_path)
        await replica.start(Settings(state_dir=tmp_path), stand_in_launcher())
        assert replica.process is not None
        await wait_until(lambda: "waiting" in replica.log_path.read_text(), 10, "the stand-in to start")
        assert not _listens_on(replica.port)
        os.kill(replica.process.pid, signal.SIGKILL)
        with pytest.raises(ReplicaFailed):
            await replica.wait_ready(timeout=30)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", replica.port), timeout=5)
        await replica.stop(5)

    asyncio.run(scenario())


def _listens_on(port: int) -> bool:
    """Whether this process holds a listening TCP socket on ``port`` (its fds against /proc/net/tcp)."""
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}")]
    inodes = {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A" and fields[9] in inodes:
            return True
    return False
