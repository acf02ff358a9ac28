"""Real services a test needs — redis-server and a PostgreSQL server — started on 127.0.0.1 with a free
port and a temporary data folder, from Debian's packages (installed here when missing: the machine is
ours and we are root). Plain Python with no pytest in it, so the benchmarks start them the same way."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def descendants(pid: int) -> set[int]:
    """All live processes below ``pid`` (replicas run in their own sessions, so walk parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def ensure_debian_package(binary: str, package: str, folders: tuple[str, ...] = ()) -> str:
    """The path of ``binary`` (on PATH or in one of ``folders``), installing ``package`` if it is missing."""
    def find() -> str | None:
        return shutil.which(binary) or next((str(Path(f) / binary) for f in folders if (Path(f) / binary).is_file()),
                                            None)

    found = find()
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True)
        found = find()
    assert found, f"{binary} could not be installed (Debian package {package})"
    return found


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.binary, self.folder, self.port = ensure_debian_package("redis-server", "redis-server"), folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, 15, "redis-server to answer")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _pg_folders() -> tuple[str, ...]:
    root = Path("/usr/lib/postgresql")
    return tuple(str(p / "bin") for p in sorted(root.iterdir(), reverse=True)) if root.is_dir() else ()


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb in a temporary folder, trust auth on 127.0.0.1 only). The
    server refuses to run as root, so as root it runs as the package's ``postgres`` user, in a folder of
    its own under /tmp (pytest's folders are closed to other users)."""

    def __init__(self) -> None:
        self.initdb = ensure_debian_package("initdb", "postgresql", _pg_folders())
        self.bin = Path(self.initdb).resolve().parent
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="fnserve-postgres-")), free_port()
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def init(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run([*self._as_owner(), str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        return self

    def start(self) -> PostgresServer:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [*self._as_owner(), str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
             "-c", "fsync=off", "-c", "max_connections=200"], stdout=log, stderr=log)
        wait_for(self._up, 30, f"PostgreSQL on port {self.port}\n{self.log.read_text(errors='replace')[-2000:]}")
        return self

    def _up(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        self._databases += 1
        name = f"fnserve_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown, as an operator stops a server: clients' sessions are ended, not waited for."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run([*self._as_owner(), str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast",
                            "-w"], check=True, capture_output=True, timeout=60)
            self.process.wait(30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
