"""One replica (``python -m runtimes.server``) as a test's subprocess, without a router in front.

``start_replica`` writes the function's manifest, starts the replica on a free loopback port with its
log in a file, and returns at once, so a test module can start several and let them load in parallel;
``Replica.wait_ready`` then polls until the port answers (the model loads before the port opens). The
replica dies with the test process (the replica contract's parent pid), and ``stop`` ends it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fnserve.replica_contract import MODULE, ReplicaArgs, parent_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """A running replica: its URL, its log, and the process."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.openai_url = f"{self.url}/openai/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"replica {self.name} exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"replica {self.name} not listening after {timeout} s:\n{self.log()}")

    def terminate(self) -> None:
        """Ask the replica to stop (SIGTERM) without waiting for it."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        """Stop the replica and wait until it has (SIGKILL after 30 s)."""
        if self.process.poll() is None:
            self.process.terminate()
        if self.process.returncode is None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_replica(folder: Path, name: str, model_dir: Path, transformers: dict[str, Any], *,
                  scaling: dict[str, Any] | None = None, cpu: str = "1") -> Replica:
    """Start a transformers function ``name`` serving ``model_dir``; its manifest and log go in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"apiVersion": "fnserve.dev/v1", "kind": "Function", "metadata": {"name": name},
                "spec": {"runtime": "transformers", "model": {"uri": "model"}, "transformers": transformers,
                         "resources": {"cpu": cpu}, "scaling": scaling or {}}}
    (folder / "function.yaml").write_text(yaml.safe_dump(manifest))
    port = free_port()
    log_path = folder / "replica.log"
    args = ReplicaArgs(function_dir=folder, model_dir=model_dir, port=port)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", MODULE, *args.to_argv()], stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **parent_env()})
    return Replica(name, process, port, log_path)
