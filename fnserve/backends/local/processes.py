"""How replica processes are launched and watched: a plain spawn, or a fork from a warm fork server.

Both give a ProcessHandle (pid, returncode, wait()), so the backend does not care which started a
replica. A forked replica is the fork server's child, not ours: it cannot be waited on, so its exit is
seen through a pidfd (Linux ≥ 5.3) and its exit status is unknown (reported as -1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Protocol

from fnserve.replica_contract import parent_env

log = logging.getLogger("fnserve.local")


class ProcessHandle(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class SpawnedProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()


class ForkedProcess:
    """A process we did not start ourselves, watched through a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exited = asyncio.get_running_loop().create_future()
        self._fd = os.pidfd_open(pid)
        asyncio.get_running_loop().add_reader(self._fd, self._on_exit)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        os.close(self._fd)
        if not self._exited.done():
            self._exited.set_result(-1)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


async def spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> ProcessHandle:
    """A new interpreter: ~1 s of imports before the model even starts to load."""
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env, **parent_env()}, start_new_session=True, cwd=str(cwd))
    return SpawnedProcess(process)


class ForkServerClient:
    """Starts and talks to one fork server (a process that pre-imported a runtime) over a Unix socket."""

    def __init__(self, runtime: str, socket_path: Path, log_path: Path, python: str) -> None:
        self.runtime = runtime
        self.socket_path = socket_path
        self.log_path = log_path
        self.python = python
        self._process: asyncio.subprocess.Process | None = None
        self._starting = asyncio.Lock()

    async def _ensure_started(self, timeout: float = 30.0) -> None:
        async with self._starting:
            if self._process is not None and self._process.returncode is None:
                return
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
            with self.log_path.open("ab") as log_file:
                self._process = await asyncio.create_subprocess_exec(
                    self.python, "-m", "fnserve.backends.local.forkserver", "--runtime", self.runtime,
                    "--socket", str(self.socket_path), stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **parent_env(), "OPENBLAS_NUM_THREADS": "1"})
            deadline = time.monotonic() + timeout
            while not self.socket_path.exists():
                if self._process.returncode is not None or time.monotonic() > deadline:
                    raise OSError(f"fork server for {self.runtime} did not start; see {self.log_path}")
                await asyncio.sleep(0.02)
            log.info("fork server for %s ready (pid %d)", self.runtime, self._process.pid)

    async def fork(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> ProcessHandle:
        await self._ensure_started()
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log_path)}
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        finally:
            writer.close()
        if "pid" not in reply:
            raise OSError(f"fork server for {self.runtime}: {reply.get('error', reply)}")
        return ForkedProcess(int(reply["pid"]))

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except asyncio.TimeoutError:
                self._process.kill()
        self.socket_path.unlink(missing_ok=True)


def forking_supported() -> tuple[bool, str]:
    """Fork servers need fork() that is safe after imports (not macOS) and pidfds (Linux ≥ 5.3)."""
    if not sys.platform.startswith("linux"):
        return False, f"fork() after imports is unsafe on {sys.platform}"
    if not hasattr(os, "pidfd_open"):
        return False, "os.pidfd_open is unavailable"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as exc:
        return False, f"pidfd_open failed ({exc.strerror})"
    return True, "fork server"
