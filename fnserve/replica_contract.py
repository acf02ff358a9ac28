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
import functools
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
        args = _parser().parse_args(argv)
        return cls(args.function_dir, args.model_dir, args.manifest, args.port, args.host, args.threads)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once: a fork server builds it before forking, so a forked replica only parses (~3 ms less)."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Serve one fnserve function as a KServe ModelServer.")
    parser.add_argument("--function-dir", type=Path, required=True,
                        help="folder with the function's code (handler) and, by default, function.yaml")
    parser.add_argument("--manifest", type=Path, help="function manifest (default: FUNCTION_DIR/function.yaml)")
    parser.add_argument("--model-dir", type=Path, required=True, help="folder holding the model artifact")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--threads", type=int, default=1, help="worker threads running the model")
    return parser


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


# -- start-up hand-over: the socket a replica serves on, and how it says it is ready ---------------------------

LISTEN_FD_ENV = "FNSERVE_LISTEN_FD"
"""A listening TCP socket the starter bound and handed over (socket activation, as systemd does it): the
replica serves on it instead of binding ``--host``/``--port``. Its address is known before the replica
exists, nothing else can take the port meanwhile, and a request sent before the server accepts waits in
the kernel's accept queue instead of being refused. Unset (a container): the replica binds its port."""

READY_FD_ENV = "FNSERVE_READY_FD"
"""The write end of a pipe the starter reads. The replica writes one JSON line when its model is loaded
(``ready``: from then on a request sent to its socket is answered), one when its server accepts
(``serving``), then closes it; end of file before ``ready`` means it died starting. This is what the
starter waits on: no probe, no poll. Unset: nothing is written."""


def inherited_fd(name: str) -> int | None:
    """The descriptor a starter passed under the environment variable ``name``, taken out of the
    environment and made non-inheritable, so a process the function's code starts is not handed it too."""
    value = os.environ.pop(name, None)
    if value is None or not value.isdigit():
        return None
    fd = int(value)
    try:
        os.set_inheritable(fd, False)
    except OSError:  # not open: the starter's mistake, and the replica then starts as if none was passed
        return None
    return fd


@dataclass(frozen=True)
class StartupTimes:
    """When a replica's phases ended (unix seconds), as it reports them in its ``ready`` line: only the
    replica knows these; its starter knows when it launched it and when it heard it."""

    started_at: float
    """The replica's own code began (after the fork or the interpreter's start)."""
    built_at: float
    """Manifest read, handler and runtime imported, model constructed: the model's load begins."""
    loaded_at: float
    """The model is loaded: the replica is ready."""

    def to_event(self) -> dict[str, object]:
        return {"event": "ready", "startedAt": self.started_at, "builtAt": self.built_at, "loadedAt": self.loaded_at}

    @classmethod
    def from_event(cls, event: dict[str, object]) -> StartupTimes | None:
        """The times of a ``ready`` event, or None when they are missing or out of order."""
        try:
            times = [float(event[key]) for key in ("startedAt", "builtAt", "loadedAt")]  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return None
        ordered = all(math.isfinite(t) for t in times) and times == sorted(times)
        return cls(*times) if ordered else None


class ReadyPipe:
    """The replica's end of the ready pipe (READY_FD_ENV); every call is a no-op where none was passed."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def from_env(cls) -> ReadyPipe:
        return cls(inherited_fd(READY_FD_ENV))

    def send(self, event: dict[str, object]) -> bool:
        """One event line. False when the starter no longer reads the pipe: it gave up on this replica
        (a replica that is not ready yet should then exit, as nobody would ever send it a request or
        stop it)."""
        if self._fd is None:
            return True
        try:
            os.write(self._fd, json.dumps(event).encode() + b"\n")  # well under PIPE_BUF: one atomic write
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def read_event(line: bytes) -> dict[str, object] | None:
    """One line of the ready pipe as the starter reads it; None for anything but a JSON object."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


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
