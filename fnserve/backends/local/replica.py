"""One replica: a ``runtimes.server`` process on a loopback socket the router binds, and its lifecycle.

The socket is bound here and handed over with the write end of a ready pipe (the replica contract's
start-up hand-over): the replica's address exists before the replica does, requests sent before its
server accepts wait in the kernel's accept queue, and the router learns that the model is loaded from
the pipe, never by probing. A replica that dies starting ends the pipe, or is seen exiting, at once.

Replicas run in their own process session, so a Ctrl-C in the terminal reaches only the router, which
then stops them in order; each asks the kernel to SIGTERM it when its parent (the router, or the fork
server, which itself dies with the router) goes away (PR_SET_PDEATHSIG, see fnserve/replica_contract.py),
so not even a SIGKILL of the router leaves orphans. How the process is started is the launcher's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from fnserve.backends.base import ColdStart
from fnserve.backends.local.processes import Handed, ProcessHandle
from fnserve.records import Revision
from fnserve.replica_contract import LISTEN_FD_ENV, READY_FD_ENV, ReplicaArgs, StartupTimes, read_event
from fnserve.settings import Settings

# (server arguments, extra environment, working folder, log file, descriptors handed over) → a started process
Launch = Callable[[list[str], dict[str, str], Path, Path, Handed], Awaitable[ProcessHandle]]

ACCEPT_BACKLOG = 1024
"""Connections a replica's socket holds before its server accepts them: a burst from zero all fits."""


PROBE = {"User-Agent": "fnserve-probe/1"}
"""What the router's readiness and liveness probes say they are: a replica does not log them."""


def log_env(settings: Settings) -> dict[str, str]:
    """The router's log settings, for a replica to write the same lines (runtimes/server.py reads them)."""
    return {"FNSERVE_LOG_LEVEL": settings.log_level, "FNSERVE_LOG_FORMAT": settings.log_format_for("local"),
            "FNSERVE_ACCESS_LOG": str(settings.access_log).lower()}


class ReplicaFailed(Exception):
    """The replica exited or never answered; the message carries the end of its log."""


def listening_socket() -> socket.socket:
    """A replica's socket, bound to a free loopback port and listening before the replica exists."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(ACCEPT_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (empty if it does not exist)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=count)]
    except FileNotFoundError:
        return []


class Replica:
    def __init__(self, revision: Revision, manifest_path: Path, log_dir: Path) -> None:
        self.revision = revision
        self.id = f"{revision.id}-{secrets.token_hex(2)}"
        self.port = 0
        self.url = ""
        """Known once start() has bound its socket."""
        self.manifest_path = manifest_path
        self.log_path = log_dir / f"{self.id}.log"
        self.state = "starting"
        self.outstanding = 0
        self.started_at = time.time()
        self.process: ProcessHandle | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.probe_failures = 0
        self.probing = False
        self.gpus: list[str] = []
        self.launched_at = 0.0
        self.ready_at = 0.0
        self.times: StartupTimes | None = None
        """When its phases ended, as the replica reported them with ``ready``."""
        self.serving_at = 0.0
        """When its server began to accept, as it reported it (0 until then)."""
        self._events: asyncio.StreamReader | None = None
        self._pipe: asyncio.ReadTransport | None = None
        self.cold_start: ColdStart | None = None
        """The cold start recorded on this replica, completed when the replica says it serves."""
        self.cold_start_told = False
        """Whether a cold start on this replica has been recorded (once: the first request that waited)."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def server_args(self, settings: Settings) -> ReplicaArgs:
        """The arguments of ``python -m runtimes.server`` for this replica."""
        return ReplicaArgs(self.revision.source_dir, self.revision.model_dir, self.manifest_path, self.port,
                           "127.0.0.1", settings.replica_threads)

    async def start(self, settings: Settings, launch: Launch) -> None:
        """Bind the replica's socket, launch it with the socket and a ready pipe's write end, and keep
        the read end: wait_ready() reads it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ",".join(self.gpus), **log_env(settings)}
        listener = listening_socket()
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        read_end, write_end = os.pipe()
        try:
            self._events, self._pipe = await _pipe_reader(read_end)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            listener.close()
            raise
        try:
            self.launched_at = time.time()
            self.process = await launch(self.server_args(settings).to_argv(), env, self.revision.source_dir,
                                        self.log_path, {LISTEN_FD_ENV: listener.fileno(), READY_FD_ENV: write_end})
        finally:  # the replica holds them now: its socket and the pipe end with it, not with us
            listener.close()
            os.close(write_end)
        if self.state == "stopped":  # stopped (a delete, a drain) while it was being launched
            self._signal(signal.SIGKILL)
            raise ReplicaFailed(f"replica {self.id} was stopped while it started")

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the replica's ``ready`` line: its model is loaded, requests sent now are answered.
        Its exit, or the end of the pipe, first means it died starting; its log says why. (The exit is
        watched too: a process the function's code started may hold the pipe open after the replica died.)"""
        deadline = time.monotonic() + timeout
        while True:
            if self._events is None or self.process is None or self.state == "stopped":
                raise ReplicaFailed(f"replica {self.id} was stopped while it started")
            line = await self._next_line(deadline)
            if line is None:
                raise ReplicaFailed(self._failure(f"was not ready within {timeout:.0f} s"))
            if not line:
                self._close_pipe()
                raise ReplicaFailed(self._failure(await self._ended()))
            event = read_event(line)
            if event is not None and event.get("event") == "ready":
                break
        self.state, self.ready_at = "ready", time.time()
        self.times = StartupTimes.from_event(event)

    async def _next_line(self, deadline: float) -> bytes | None:
        """The pipe's next line; b"" at its end or when the process exits first; None at the deadline."""
        assert self._events is not None and self.process is not None
        reading = asyncio.ensure_future(self._events.readline())
        exiting = asyncio.ensure_future(self.process.wait())
        try:
            done, _ = await asyncio.wait({reading, exiting}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exiting.cancel()
            if not reading.done():
                reading.cancel()
        if reading in done:
            return reading.result()
        return b"" if exiting in done else None

    async def watch_serving(self) -> None:
        """The rest of the pipe: the ``serving`` line completes the cold start's record, then its end."""
        try:
            while self._events is not None and (line := await self._events.readline()):
                event = read_event(line)
                if event is not None and event.get("event") == "serving":
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        self.serving_at = float(event["at"])  # type: ignore[arg-type]
                    if self.cold_start is not None:
                        self.cold_start.served(self.serving_at)
        finally:
            self._close_pipe()

    async def _ended(self) -> str:
        """Why a replica that closed its pipe before ``ready`` is gone (a moment for its exit to be seen)."""
        assert self.process is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), 1.0)
        code = self.process.returncode
        return "exited before its model was loaded" + ("" if code is None or code < 0 else f" (code {code})")

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe, self._events = None, None

    async def answers(self, session: aiohttp.ClientSession, timeout: float) -> bool:
        """One liveness probe: does the model's readiness route answer 200 within ``timeout``?"""
        try:
            url = f"{self.url}/v1/models/{self.revision.name}"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), headers=PROBE) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    def kill(self) -> None:
        """Immediately, for a replica that no longer answers: its connections drop, so requests in
        flight on it end with 503 instead of waiting for their deadline."""
        self.state = "failed"
        if self.process is not None and self.process.returncode is None:
            self._signal(signal.SIGKILL)

    def _failure(self, what: str) -> str:
        lines = [line for line in tail_lines(self.log_path, 40) if line.strip()]
        useful = [line for line in lines if line.startswith("fnserve replica:")] or lines[-12:]
        return f"replica {self.id} {what}" + ("; log:\n" + "\n".join(useful) if useful else "")

    async def stop(self, timeout: float) -> None:
        """SIGTERM the replica's process group, then SIGKILL what is left after ``timeout``."""
        self.state = "stopped"
        self._close_pipe()
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            self._signal(signal.SIGKILL)
            await process.wait()

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def begin(self) -> None:
        self.outstanding += 1
        self.idle.clear()

    def end(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.outstanding = 0
            self.idle.set()


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """The read end of a pipe as a stream the event loop wakes on: a line arrives, nothing polls."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    return reader, transport
