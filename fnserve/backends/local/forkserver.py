"""``python -m fnserve.backends.local.forkserver``: a warm parent that forks replicas.

It imports kserve, runtimes.server and one runtime's module (with onnxruntime or torch) once, then
forks a child per request, which becomes a replica: new session, its own log file, the requested
working folder and environment, then runtimes.server.main(argv). Measured here: a fresh interpreter
needs about 1 s of imports before a replica can load its model; a fork needs a few milliseconds.

It starts no thread pools before forking (OPENBLAS_NUM_THREADS=1 is set by the backend; onnxruntime's
import leaves one parked thread that holds no lock) and never initialises CUDA, so children are free
to pick their GPUs. Requests are one JSON line on a Unix socket: {"argv", "env", "cwd", "log"};
the answer is {"pid": N} or {"error": "..."}. Children are reaped automatically (SIGCHLD ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from fnserve.replica_contract import die_with_parent, parent_env


def _child(request: dict[str, Any], listener: socket.socket, connection: socket.socket) -> None:
    """Runs in the forked child: become a replica; never returns."""
    code = 1
    try:
        listener.close()
        connection.close()
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        os.environ.update(parent_env(os.getppid()))  # the replica dies with the fork server
        print(f"replica forked from the warm fork server (pid {os.getppid()})", flush=True)
        from runtimes.server import main

        main(request["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(runtime: str, path: Path) -> None:
    from runtimes.server import RUNTIME_CLASSES

    die_with_parent()
    target = RUNTIME_CLASSES.get(runtime)
    if target is None:
        raise SystemExit(f"fork server: unknown runtime {runtime!r}")
    __import__(target.partition(":")[0])  # the runtime module and its library (onnxruntime, torch…)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited replicas

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_suffix(".new")
    staging.unlink(missing_ok=True)
    listener.bind(str(staging))
    listener.listen(64)
    os.rename(staging, path)  # the socket appears only once it accepts connections
    print(f"fork server for {runtime} ready on {path} (pid {os.getpid()})", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection:
            try:
                request = json.loads(connection.makefile("rb").readline())
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, listener, connection)
                connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except (OSError, ValueError, KeyError) as exc:
                connection.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Warm fork server for fnserve replicas.")
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
    serve(args.runtime, args.socket)


if __name__ == "__main__":
    main()
