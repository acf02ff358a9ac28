"""``python -m fnserve.backends.local.forkserver``: a warm parent that forks replicas.

Everything a replica needs that does not depend on its function is done here once, before any fork:
kserve, runtimes.server and one runtime's module (with onnxruntime or torch) are imported, and KServe's
app is built with all its routes and uvicorn's configuration (runtimes.server.ReplicaServer). A fresh
interpreter needs about 1 s of imports before a replica can load its model, and building the app another
~100 ms; a forked child only reads its manifest, imports its handler, loads its model and serves.

It starts no thread pools before forking (OPENBLAS_NUM_THREADS=1 is set by the backend; onnxruntime's
import leaves one parked thread that holds no lock) and never initialises CUDA, so children are free
to pick their GPUs. What it imported is frozen out of the garbage collector's reach (gc.freeze), so a
child's collections do not copy the parent's pages.

Its own listening Unix socket is bound by the router and handed over (``--fd``), so the router can send
a request at once, while this process is still importing. Requests are one JSON line,
{"argv", "env", "cwd", "log", "fds"}, sent with the descriptors the replica is handed (SCM_RIGHTS):
``fds`` names, in order, the environment variable under which the child finds each one. The answer is
{"pid": N} or {"error": "..."}. Children are reaped automatically (SIGCHLD ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from fnserve.replica_contract import die_with_parent, parent_env

MAX_FDS = 8
REQUEST_LIMIT = 1 << 20
"""A request is an argv and an environment: far less than this."""


def _fork_child(*inherited: socket.socket) -> tuple[int, int]:
    """Fork (a spare or a replica); (the child's pid, 0 in the child; this fork server's pid, taken before
    the fork). The child's first steps, before it knows which replica it becomes: the fork server's
    sockets closed, its own session, default signals, nothing read from the router's terminal; a child
    that cannot take them ends there, never running the fork server's loop."""
    sys.stdout.flush()
    sys.stderr.flush()
    server_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            for sock in inherited:
                sock.close()
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        except BaseException:
            os._exit(1)
    return pid, server_pid


def _become_replica(request: dict[str, Any], handed: dict[str, int], prepared: Any, server_pid: int) -> NoReturn:
    """Runs in a child: become the replica ``request`` describes; never returns. ``server_pid``, taken
    before the fork: a fork server that died meanwhile is not mistaken for the child's new parent."""
    code = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        os.environ.update({name: str(fd) for name, fd in handed.items()})
        os.environ.update(parent_env(server_pid))  # the replica dies with the fork server
        print(f"replica forked from the warm fork server (pid {server_pid})", flush=True)
        from runtimes.server import main

        main(request["argv"], prepared)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def receive(connection: socket.socket) -> tuple[dict[str, Any], dict[str, int]]:
    """One request line and the descriptors that came with it, by the environment variable they go to."""
    data, fds, _, _ = socket.recv_fds(connection, 65536, MAX_FDS)
    try:
        while not data.endswith(b"\n"):
            more = connection.recv(65536)
            if not more or len(data) > REQUEST_LIMIT:
                raise ValueError("incomplete request")
            data += more
        request = json.loads(data)
        names = request.get("fds", []) if isinstance(request, dict) else None
        if not isinstance(names, list) or len(names) != len(fds):
            raise ValueError(f"{len(fds)} descriptor(s) sent for the names {names!r}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, dict(zip(names, fds, strict=True))


def _forward(request: dict[str, Any], handed: dict[str, int]) -> bytes:
    """A request as a spare child receives it: the same line, the descriptors in its order of names."""
    return json.dumps({**request, "fds": list(handed)}).encode() + b"\n"


class Spare:
    """A child forked ahead of need, waiting on a socket pair for the request that makes it a replica.

    Forking (~5–10 ms for a parent this size, all of it on a cold start's critical path) is then done
    while nothing waits; a request only pays for handing its descriptors over. A spare holds no function's
    code, model or port — it is this fork server again, shared — and it exits when the fork server does.
    """

    def __init__(self, listener: socket.socket, prepared: Any) -> None:
        ours, theirs = socket.socketpair()
        try:
            pid, server_pid = _fork_child(listener, ours)
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                request, handed = receive(theirs)  # end of file: the fork server has gone
                theirs.close()
            except BaseException:
                os._exit(0)
            _become_replica(request, handed, prepared, server_pid)
        theirs.close()
        self.pid, self.control = pid, ours

    def take(self, request: dict[str, Any], handed: dict[str, int]) -> int:
        """Hand ``request`` to the spare; its pid. OSError: the spare is gone (fork one instead)."""
        try:
            socket.send_fds(self.control, [_forward(request, handed)], list(handed.values()))
        finally:
            self.control.close()
        return self.pid


def _fork(request: dict[str, Any], handed: dict[str, int], inherited: list[socket.socket], prepared: Any) -> int:
    """A replica forked now: what a request pays for when no spare is waiting."""
    pid, server_pid = _fork_child(*inherited)
    if pid == 0:
        _become_replica(request, handed, prepared, server_pid)
    return pid


def _abandoned(connection: socket.socket) -> bool:
    """Did the router close this request's connection (it gave up waiting)? Then nothing is forked for it:
    the router no longer tracks that replica's socket and would never stop it."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def serve(runtime: str, listener: socket.socket, spare_after: float | None) -> None:
    """Answer fork requests until killed. ``spare_after``: seconds without a request after which a spare
    child is forked (None: never)."""
    from runtimes.server import prepare

    die_with_parent()
    try:
        prepared = prepare(runtime)  # imports, KServe's app, uvicorn's config: see runtimes.server.prepare
    except ValueError as exc:
        raise SystemExit(f"fork server: {exc}") from None
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited replicas
    gc.collect()
    gc.freeze()  # all of the above stays where it is: children's collections leave these pages shared
    print(f"fork server for {runtime} ready (pid {os.getpid()})", flush=True)
    spare: Spare | None = None
    while True:
        # a spare is forked once the fork server has been idle a while: not in the milliseconds after a
        # fork, while the replica it started imports and loads, and not between the requests of a burst
        idle = spare is None and spare_after is not None
        if idle and not select.select([listener], [], [], spare_after)[0]:
            try:
                spare = Spare(listener, prepared)
            except OSError as exc:  # no spare this time (no memory, no descriptors): fork on request
                print(f"fork server: cannot fork a spare child: {exc}", flush=True)
                spare_after = None
            continue
        connection, _ = listener.accept()
        with connection:
            handed: dict[str, int] = {}
            try:
                request, handed = receive(connection)
                if _abandoned(connection):
                    continue
                pid = None
                if spare is not None:
                    with contextlib.suppress(OSError):  # a spare that died: fork one now instead
                        pid = spare.take(request, handed)
                    spare = None
                if pid is None:
                    pid = _fork(request, handed, [listener, connection], prepared)
                connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                try:
                    connection.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
                except OSError:  # the router gave up on this request: nothing to tell
                    pass
            finally:  # the child has its copies; ours would keep its socket open and its ready pipe unended
                for fd in handed.values():
                    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description="Warm fork server for fnserve replicas.")
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--fd", type=int, required=True, help="the listening Unix socket the router bound")
    parser.add_argument("--spare-after", type=float, default=None,
                        help="seconds idle after which a spare child is forked ahead of the next request")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
    listener = socket.socket(fileno=args.fd)
    os.set_inheritable(listener.fileno(), False)
    serve(args.runtime, listener, args.spare_after)


if __name__ == "__main__":
    main()
