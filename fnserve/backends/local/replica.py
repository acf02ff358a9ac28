"""One replica: a ``runtimes.server`` process on a free loopback port, and its lifecycle.

Replicas run in their own process session, so a Ctrl-C in the terminal reaches only the router, which
then stops them in order; each asks the kernel to SIGTERM it when its parent (the router, or the fork
server, which itself dies with the router) goes away (PR_SET_PDEATHSIG, see fnserve/replica_contract.py),
so not even a SIGKILL of the router leaves orphans. How the process is started is the launcher's business.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from fnserve.backends.local.processes import ProcessHandle
from fnserve.records import Revision
from fnserve.replica_contract import STARTUP_FILE_ENV, ReplicaArgs, read_startup
from fnserve.settings import Settings

# (server arguments, extra environment, working folder, log file) → a started process
Launch = Callable[[list[str], dict[str, str], Path, Path], Awaitable[ProcessHandle]]


PROBE = {"User-Agent": "fnserve-probe/1"}
"""What the router's readiness and liveness probes say they are: a replica does not log them."""


def log_env(settings: Settings) -> dict[str, str]:
    """The router's log settings, for a replica to write the same lines (runtimes/server.py reads them)."""
    return {"FNSERVE_LOG_LEVEL": settings.log_level, "FNSERVE_LOG_FORMAT": settings.log_format_for("local"),
            "FNSERVE_ACCESS_LOG": str(settings.access_log).lower()}


class ReplicaFailed(Exception):
    """The replica exited or never answered; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
        self.startup_path = log_dir / f"{self.id}.startup.json"
        self.launched_at = 0.0
        self.ready_at = 0.0
        self.load: tuple[float, float] | None = None
        """When the model began and finished loading (unix seconds), as the replica reported it."""
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ",".join(self.gpus), **log_env(settings),
               STARTUP_FILE_ENV: str(self.startup_path)}
        self.launched_at = time.time()
        self.process = await launch(self.server_args(settings).to_argv(), env, self.revision.source_dir, self.log_path)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        """Poll the model's own readiness route until it answers 200, the process dies, or time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        url = f"{self.url}/v1/models/{self.revision.name}"
        delay = 0.02
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise ReplicaFailed(self._failure(f"exited with code {self.process.returncode}"))
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2), headers=PROBE) as response:
                    if response.status == 200:
                        self.state, self.ready_at = "ready", time.time()
                        self.load = read_startup(self.startup_path)
                        self.startup_path.unlink(missing_ok=True)
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        raise ReplicaFailed(self._failure(f"was not ready within {timeout:.0f} s"))

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
        self.startup_path.unlink(missing_ok=True)  # a replica that never answered leaves its timing behind
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
