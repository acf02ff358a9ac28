"""The contract between whoever starts a replica and the replica itself, written once for both sides.

The embedded backend (replica.py, processes.py, the fork server), the cluster renderer and the job
wrapper start processes; ``runtimes.server`` and ``fnserve.jobs.run`` are those processes. What passes
between them — the replica's command line, the environment variable that names the parent to die with,
and the way a child dies with it — lives here, so the two sides cannot drift apart. So does what a
generative replica tells the router about tokens (two headers and one SSE comment), which the router
reads to settle token quotas, and the OpenAI error object both answer with under ``/openai/``.

Standard library only, on purpose: replicas import this before kserve (which parses ``sys.argv`` at
import), and the fork server imports it before it forks; neither may pay for anything heavier.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

MODULE = "runtimes.server"
"""The replica program: ``python -m runtimes.server`` (also the containers' entry point)."""

PROCESS_NAME = "fnserve-replica"
"""What ps and top show for a replica, however it was started (PR_SET_NAME)."""

PARENT_PID_ENV = "FNSERVE_PARENT_PID"
"""The pid a child (replica, fork server, job wrapper) must not outlive; unset in a container."""

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ReplicaArgs:
    """The replica's command-line arguments; ``parse(args.to_argv()) == args``."""

    function_dir: Path
    """The function's code (handler) and, by default, its function.yaml."""
    model_dir: Path
    """The folder holding the model artifact."""
    manifest: Path | None = None
    """The function manifest as deployed (default: FUNCTION_DIR/function.yaml)."""
    port: int = 8080
    host: str = "127.0.0.1"
    """0.0.0.0 inside a container; replicas on a shared machine stay on loopback."""
    threads: int = 1
    """Worker threads running the model."""

    def to_argv(self) -> list[str]:
        """The arguments after ``python -m runtimes.server``. ``--threads`` is left out at its default,
        so the cluster's rendered container args stay as they were."""
        argv = ["--function-dir", str(self.function_dir)]
        if self.manifest is not None:
            argv += ["--manifest", str(self.manifest)]
        argv += ["--model-dir", str(self.model_dir), "--host", self.host, "--port", str(self.port)]
        if self.threads != 1:
            argv += ["--threads", str(self.threads)]
        return argv

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> ReplicaArgs:
        """Parse the replica's arguments (``sys.argv[1:]`` by default); exits 2 with usage on a mistake."""
        parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                         description="Serve one fnserve function as a KServe ModelServer.")
        parser.add_argument("--function-dir", type=Path, required=True,
                            help="folder with the function's code (handler) and, by default, function.yaml")
        parser.add_argument("--manifest", type=Path, help="function manifest (default: FUNCTION_DIR/function.yaml)")
        parser.add_argument("--model-dir", type=Path, required=True, help="folder holding the model artifact")
        parser.add_argument("--port", type=int, default=8080)
        parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
        parser.add_argument("--threads", type=int, default=1, help="worker threads running the model")
        args = parser.parse_args(argv)
        return cls(args.function_dir, args.model_dir, args.manifest, args.port, args.host, args.threads)


def parent_env(pid: int | None = None) -> dict[str, str]:
    """The environment that tells a child which process to die with (default: this one)."""
    return {PARENT_PID_ENV: str(os.getpid() if pid is None else pid)}


def set_parent_death_signal(sig: signal.Signals) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies, even by SIGKILL (elsewhere:
    nothing). Safe between fork and exec."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def die_with_parent(exit_code: int = 0) -> None:
    """SIGTERM this process when the parent named in FNSERVE_PARENT_PID dies; if it already has (it died
    before the request took effect), exit with ``exit_code`` now. Without the variable: nothing."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != int(parent):
        raise SystemExit(exit_code)


# -- start-up timing: where a replica's cold start went ---------------------------------------------------------

STARTUP_FILE_ENV = "FNSERVE_STARTUP_FILE"
"""A path the replica writes its start-up timing to, as JSON, before it begins to serve (unset: nothing is
written). The starter knows when it launched the process and when it first answered; only the replica
knows when its model began and finished loading."""


def write_startup(path: str, load_started_at: float, load_ended_at: float) -> None:
    """Record the model load's wall-clock bounds (unix seconds) for whoever started this replica."""
    Path(path).write_text(json.dumps({"loadStartedAt": load_started_at, "loadEndedAt": load_ended_at}))


def read_startup(path: Path) -> tuple[float, float] | None:
    """(load started, load ended) as the replica wrote them, or None when it wrote nothing readable."""
    try:
        data = json.loads(path.read_text())
        started, ended = float(data["loadStartedAt"]), float(data["loadEndedAt"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (started, ended) if math.isfinite(started) and math.isfinite(ended) and started <= ended else None


# -- token usage: how a replica tells the router what a generative answer cost --------------------------------

PROMPT_TOKENS_HEADER = "x-fnserve-prompt-tokens"
"""On every generative answer (streamed or not) and embeddings answer: tokens of the rendered prompt."""

COMPLETION_TOKENS_HEADER = "x-fnserve-completion-tokens"
"""On non-streamed answers: tokens generated, EOS excluded (0 for embeddings)."""

USAGE_COMMENT_PREFIX = b": fnserve-usage "
"""A streamed answer that ends normally writes, as its last event before ``data: [DONE]`` (or as its
last event where there is none), the SSE comment ``usage_comment(prompt, completion)``; clients ignore
comments, the router reads it to settle token quotas."""


def usage_comment(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The SSE comment event that ends a streamed answer: ``: fnserve-usage prompt_tokens=N completion_tokens=M``."""
    return USAGE_COMMENT_PREFIX + f"prompt_tokens={prompt_tokens} completion_tokens={completion_tokens}\n\n".encode()


def parse_usage_comment(line: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from one line of a stream, or None if it is not the usage comment."""
    if not line.startswith(USAGE_COMMENT_PREFIX):
        return None
    fields = dict(part.split(b"=", 1) for part in line[len(USAGE_COMMENT_PREFIX):].split() if b"=" in part)
    try:
        return int(fields[b"prompt_tokens"]), int(fields[b"completion_tokens"])
    except (KeyError, ValueError):
        return None


# -- OpenAI's error shape: what replica and router both answer under /openai/ ---------------------------------

OPENAI_PREFIX = "/openai/"
"""Paths under this prefix answer errors as ``{"error": openai_error(...)}``; all others ``{"error": "..."}``."""

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> dict[str, str | None]:
    """OpenAI's error object for an answer of ``status``: the official clients pick their exception from
    the status and show ``message``; ``param`` names the field at fault, ``code`` a stable word."""
    kind = type or _OPENAI_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"message": message, "type": kind, "param": param, "code": code}
