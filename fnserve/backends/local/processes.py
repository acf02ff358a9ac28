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
import socket
import sys
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
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:  # it exited (and was reaped) before we looked: its log says why
            self._exited.set_result(-1)
            return
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


class ForkServerUnavailable(OSError):
    """The fork server could not be reached: nothing was handed over, so starting the replica another
    way is safe. Any other failure of a fork request came after the request was delivered, when a
    replica may exist already: starting a second one on the same socket would leave one untracked."""


Handed = dict[str, int]
"""Descriptors a new process is handed, by the environment variable that tells it their number."""


async def spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, fds: Handed) -> ProcessHandle:
    """A new interpreter: ~1 s of imports before the model even starts to load."""
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env, **parent_env(), **{name: str(fd) for name, fd in fds.items()}},
            start_new_session=True, cwd=str(cwd), pass_fds=tuple(fds.values()))
    return SpawnedProcess(process)


class ForkServerClient:
    """Starts and talks to one fork server (a process that pre-imported a runtime) over a Unix socket.

    The socket is bound here and handed to the fork server when it starts (socket activation): the first
    replica's request is sent at once and waits in the accept queue while the fork server imports, and a
    fork server that dies resets it (its socket goes with it), so nothing here waits for a file to appear.
    """

    def __init__(self, runtime: str, socket_path: Path, log_path: Path, python: str,
                 spare_after: float | None = None) -> None:
        self.runtime = runtime
        self.spare_after = spare_after
        self.socket_path = socket_path
        self.log_path = log_path
        self.python = python
        self._process: asyncio.subprocess.Process | None = None
        self._starting = asyncio.Lock()

    async def _ensure_started(self) -> None:
        async with self._starting:
            if self._process is not None and self._process.returncode is None:
                return
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, self.log_path.open("ab") as log_file:
                listener.bind(str(self.socket_path))
                listener.listen(128)
                spare = [] if self.spare_after is None else ["--spare-after", str(self.spare_after)]
                self._process = await asyncio.create_subprocess_exec(
                    self.python, "-m", "fnserve.backends.local.forkserver", "--runtime", self.runtime,
                    "--fd", str(listener.fileno()), *spare, pass_fds=(listener.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **parent_env(), "OPENBLAS_NUM_THREADS": "1"})
            log.info("fork server for %s started (pid %d)", self.runtime, self._process.pid)

    @property
    def pid(self) -> int | None:
        """The fork server's process id, once started."""
        return self._process.pid if self._process is not None else None

    async def fork(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                   fds: Handed) -> ProcessHandle:
        await self._ensure_started()
        loop = asyncio.get_running_loop()
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log_path), "fds": list(fds)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.setblocking(False)
            try:
                await loop.sock_connect(connection, str(self.socket_path))
                # one small message on a fresh Unix socket: the kernel's buffer takes it whole, at once
                socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], list(fds.values()))
            except OSError as exc:
                raise ForkServerUnavailable(f"fork server for {self.runtime} unreachable ({exc}); "
                                            f"see {self.log_path}") from None
            try:
                reply = await asyncio.wait_for(_read_line(loop, connection), FORK_SERVER_TIMEOUT)
            except ConnectionResetError:  # it died with the request unread
                reply = b""
            except asyncio.TimeoutError:  # closing the connection tells the fork server not to fork it
                raise OSError(f"fork server for {self.runtime} did not answer within {FORK_SERVER_TIMEOUT:.0f} s; "
                              f"see {self.log_path}") from None
        try:
            answer = json.loads(reply)
        except ValueError:
            answer = {"error": "it closed the connection" if not reply else f"unreadable answer {reply[:200]!r}"}
        if not reply:  # it died with the request unread, or before it could take it: nothing was forked
            raise ForkServerUnavailable(f"fork server for {self.runtime}: {answer['error']}; see {self.log_path}")
        if "pid" not in answer:
            raise OSError(f"fork server for {self.runtime}: {answer.get('error', answer)}; see {self.log_path}")
        return ForkedProcess(int(answer["pid"]))

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except asyncio.TimeoutError:
                self._process.kill()
        self.socket_path.unlink(missing_ok=True)


FORK_SERVER_TIMEOUT = 60.0
"""How long a fork may take, a fork server's first start (its imports) included."""


async def _read_line(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        more = await loop.sock_recv(connection, 4096)
        if not more:
            break
        data += more
    return data


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
