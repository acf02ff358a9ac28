"""Shared fixtures: a trained copy of the example function, and real `fnserve up` processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from fnserve.cli.client import AdminClient
from tests.services import descendants

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "functions" / "sentiment"
FNSERVE = [sys.executable, "-m", "fnserve.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """wait_for inside an event loop: the loop keeps running (a replica's pipe is read) between polls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None, timeout: float = 60, context: ssl.SSLContext | None = None) -> tuple[int, Any, Any]:
    """A plain HTTP call (urllib, no client library in between); JSON bodies are decoded; the headers
    come back as a case-insensitive mapping. ``context``: what an https:// URL is verified with."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, head, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, head, payload = exc.code, exc.headers, exc.read()
    if "json" in (head.get("Content-Type") or ""):
        return status, head, json.loads(payload)
    return status, head, payload


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Router:
    """A real `fnserve up` subprocess on a free loopback port with its own state dir. ``tls``: (certificate,
    key) to serve HTTPS with, the certificate trusted by this helper and its CLI calls; ``admin_key``: the
    admin token when it does not come from <state dir>/admin.key (FNSERVE_ADMIN_KEY_FILE)."""

    def __init__(self, state_dir: Path, extra: list[str] | None = None, env: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None, admin_key: str = "") -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"router-{self.port}.log"
        self.extra = [*(extra or []), *(("--tls-cert", str(tls[0]), "--tls-key", str(tls[1])) if tls else ())]
        self.ca_file = str(tls[0]) if tls else None
        self.context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"FNSERVE_CA_FILE": self.ca_file} if self.ca_file else {}),
                    **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_key = admin_key

    def start(self) -> Router:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*FNSERVE, "up", "--port", str(self.port), "--state-dir", str(self.state_dir), *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(self._ready, 30, f"router on {self.url} to be ready\n{self.log()}")
        self.admin_key = self.admin_key or (self.state_dir / "admin.key").read_text().strip()
        return self

    @property
    def admin(self) -> dict[str, str]:
        """Headers that authenticate as the admin key `fnserve up` created."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def api(self) -> AdminClient:
        """The admin API as the admin key, for setup and reads (the CLI's own client); tests that assert
        on statuses and raw bodies use http() instead."""
        return AdminClient(self.url, self.admin_key, timeout=60, ca_file=self.ca_file)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"router exited with {self.process.returncode}:\n{self.log()}")
        try:
            return http("GET", f"{self.url}/v2/health/ready", timeout=2, context=self.context)[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*FNSERVE, *args], capture_output=True, text=True, timeout=180,
                                env={**self.env, "FNSERVE_URL": self.url, "FNSERVE_API_KEY": self.admin_key, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"fnserve {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def replica_pids(self) -> set[int]:
        """Live replica processes below the router, spawned or forked (replicas name themselves)."""
        assert self.process is not None
        return {pid for pid in descendants(self.process.pid) if _comm(pid) == "fnserve-replica" and alive(pid)}

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def refused_start(state_dir: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """`fnserve up` that must refuse to start: exit 1 with one line on stderr, no traceback, nothing on
    stdout and no state store made; returns that line."""
    done = subprocess.run([*FNSERVE, "up", "--port", str(free_port()), "--state-dir", str(state_dir), *flags],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stdout == "", done.stderr
    assert not (state_dir / "fnserve.db").exists()
    (line,) = done.stderr.strip().splitlines()
    return line


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def manifest_of(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "function.yaml").read_text())


def edit_manifest(folder: Path, *, name: str | None = None, **spec: Any) -> None:
    """Rename the function and/or replace top-level ``spec`` fields in its function.yaml."""
    data = manifest_of(folder)
    if name:
        data["metadata"]["name"] = name
    data["spec"].update(spec)
    (folder / "function.yaml").write_text(yaml.safe_dump(data))


def function_copy(source: Path, target: Path, *, name: str | None = None, skip: tuple[str, ...] = (),
                  **spec: Any) -> Path:
    """A copy of a function folder (less ``skip``), its manifest edited as edit_manifest() does."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", *skip))
    if name or spec:
        edit_manifest(target, name=name, **spec)
    return target


def run_job(manifest: Path, output: str, *extra: str, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    """The job wrapper as a process, as LocalJobs starts it: exit status, outcome, log."""
    result_file = manifest.parent / f".result-{free_port()}.json"
    done = subprocess.run([sys.executable, "-m", "fnserve.jobs.run", "--manifest", str(manifest), "--output", output,
                           "--result", str(result_file), *extra], capture_output=True, text=True, timeout=timeout)
    outcome = json.loads(result_file.read_text()) if result_file.exists() else {}
    result_file.unlink(missing_ok=True)
    return done.returncode, outcome, done.stdout + done.stderr


@pytest.fixture(scope="session")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example trained once by its own train.yaml through the job wrapper: the published run folder."""
    root = tmp_path_factory.mktemp("artifacts")
    code, outcome, log = run_job(EXAMPLE / "train.yaml", (root / "sentiment").as_uri())
    assert code == 0 and outcome["state"] == "succeeded", log
    return root / "sentiment" / outcome["runId"]


@pytest.fixture(scope="session")
def example_dir(example_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of functions/sentiment whose model is a plain ./model folder holding the trained run's files
    (tests that break the model on purpose edit it there)."""
    target = tmp_path_factory.mktemp("functions") / "sentiment"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("model", "__pycache__", ".train-*"))
    shutil.copytree(example_run, target / "model", ignore=shutil.ignore_patterns("_manifest.json"))
    edit_manifest(target, model={"uri": "./model"})
    return target


@pytest.fixture(scope="session")
def warm_dir(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example with minReplicas: 1, for tests that need a replica standing between requests."""
    scaling = {**manifest_of(example_dir)["spec"]["scaling"], "minReplicas": 1}
    return function_copy(example_dir, tmp_path_factory.mktemp("warm") / "sentiment", scaling=scaling)


@contextmanager
def running_router(state_dir: Path, env: dict[str, str] | None = None, **options: Any) -> Iterator[Router]:
    """A started router that is stopped afterwards, with any replica it left behind killed; ``options`` as
    Router takes them."""
    instance = Router(state_dir, env=env, **options).start()
    try:
        yield instance
    finally:
        pids = instance.replica_pids()
        instance.stop()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    with running_router(tmp_path / "state") as instance:
        yield instance


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fnserve-test", "AWS_SECRET_ACCESS_KEY": "fnserve-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 API server on loopback: moto's server mode as a subprocess (no MinIO or Ceph can be
    installed here); boto3 talks real HTTP to it."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return http("GET", f"{url}/moto-api/", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 30, "the S3 server to answer")
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, with the test's credentials in the environment."""
    import boto3

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    name = f"models-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own (tests.services.RedisServer)."""
    from tests.services import RedisServer

    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One PostgreSQL server for the session (tests.services.PostgresServer); tests take a fresh database
    each through ``database_url``."""
    from tests.services import PostgresServer

    server = PostgresServer().init().start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def database_url(postgres_server: Any) -> str:
    """A new, empty PostgreSQL database for this test."""
    return str(postgres_server.new_database())
