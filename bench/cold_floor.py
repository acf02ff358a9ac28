"""The floor of a cold start on this machine: the least time from "nothing running" to the first answer.

A cold start of fnserve is compared with this floor, in the same run and trial by trial, so that the
report can say how much of it is the machine and how much is fnserve. The floor does only what no
server can skip: a warm parent that has already imported kserve, onnxruntime, numpy and uvicorn (as
fnserve's fork server has) forks; the child loads the same model.onnx with the session options a
replica uses, loads the function's featurizer from its folder, and answers one V1 request through
uvicorn on a TCP socket the parent bound before the fork. The client connects right after the fork:
its connection waits in the kernel's accept queue until the child accepts, so no probe or poll is
timed. No router, no KServe app, no manifest, no handler loader, no log setup.

`python -m bench.cold_floor --model-dir DIR --function-dir DIR` is a long-lived child process that
bench/cold_start.py drives over pipes: it prints ``ready`` once warm; for each ``trial`` line read on
stdin it runs one trial and prints one JSON line; end of input ends it (exit 0). The JSON line:

- ``ms``: client send → whole answer read, counted from just before the fork (the figure to compare);
- ``status``: the answer's HTTP status (0 when none came: the child died, or 30 s passed);
- ``fork_ms``: before the fork → the child runs; ``load_ms``: child start → model and featurizer
  loaded; ``serve_ms``: loaded → the request reaches the app (uvicorn's start-up and the accept);
  ``answer_ms``: the app called → the client has read the whole answer (featurize, run, reply).
  Each is null when the child did not get that far;
- ``error``: only on a failed trial — what the child reported, or the client's error, or the body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import BODY
from fnserve.replica_contract import set_parent_death_signal

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_TIMEOUT = 30.0
PATH = "/v1/models/sentiment:predict"
# uvicorn.Config as the child builds it: no websockets (nothing to import for them), no lifespan, no logs.
UVICORN = {"log_level": "warning", "ws": "none", "lifespan": "off", "access_log": False}


# -- the warm parent --------------------------------------------------------------------------------------
def warm_up() -> None:
    """Import, before any fork, everything a child would otherwise import while it is being timed: what
    fnserve's fork server has imported (kserve, onnxruntime, numpy) and what uvicorn imports when it
    starts. Loading a throwaway Config with the child's settings imports exactly the modules
    ``Config.load`` picks for them (HTTP protocol, lifespan class), whatever uvicorn's version."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as fnserve's backend sets it: no pool to fork
    import kserve  # noqa: F401
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import uvicorn

    with contextlib.suppress(ImportError):
        import orjson  # noqa: F401

    async def nothing(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    uvicorn.Config(nothing, **UVICORN).load()  # type: ignore[arg-type]


def listener() -> socket.socket:
    """The socket the child will serve on, bound and listening before the fork (as fnserve's starter
    hands one over): a connection made before the child accepts waits in the accept queue."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def request_bytes(port: int) -> bytes:
    """One V1 prediction (bench.common.BODY), whole, as a client sends it; the server closes after it."""
    head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n")
    return head.encode() + BODY


def ask(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` and read the whole answer (to its Content-Length, else to end of stream); returns
    the status and the body. Raises OSError (a timeout included) when no whole answer comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as client:
        client.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed after {len(data)} bytes, before the answer's head")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), None)
        while length is None or len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                if length is not None:
                    raise ConnectionError(f"connection closed after {len(body)} of {length} body bytes")
                break
            body += chunk
    return status, body


def read_marks(fd: int) -> dict[str, str]:
    """What the child wrote on its marks pipe (``name value`` lines), read once it is dead (end of file)."""
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    marks: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        marks[name] = value
    return marks


def stages(t0: float, t1: float, marks: dict[str, str]) -> dict[str, float | None]:
    """The trial split at the child's marks (perf_counter is CLOCK_MONOTONIC, one clock for both)."""
    points = [t0, *(float(marks[m]) if m in marks else None for m in ("start", "loaded", "request")), t1]
    names = ("fork_ms", "load_ms", "serve_ms", "answer_ms")
    return {name: None if a is None or b is None else round((b - a) * 1000, 3)
            for name, a, b in zip(names, points, points[1:], strict=False)}


def trial(model_dir: Path, function_dir: Path) -> dict[str, Any]:
    """One cold start from nothing to the first answer, timed by the client; the child is killed after."""
    sock = listener()
    port = sock.getsockname()[1]
    request = request_bytes(port)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        child(sock, write_end, read_end, model_dir, function_dir)
    sock.close()
    os.close(write_end)
    result: dict[str, Any]
    try:
        status, body = ask(port, request)
        t1 = time.perf_counter()
        result = {"ms": round((t1 - t0) * 1000, 3), "status": status}
        if status != 200:
            result["error"] = body[:300].decode(errors="replace")
    except OSError as exc:
        t1 = time.perf_counter()
        result = {"ms": round((t1 - t0) * 1000, 3), "status": 0, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    marks = read_marks(read_end)
    os.close(read_end)
    result.update(stages(t0, t1, marks))
    if "error" in marks:  # what the child died of says more than the client's reset
        result["error"] = marks["error"]
    return result


# -- the forked child -------------------------------------------------------------------------------------
def child(sock: socket.socket, marks_fd: int, unused_fd: int, model_dir: Path, function_dir: Path) -> None:
    """Runs in the forked child: load, serve one socket until killed; never returns. Any failure ends it
    with exit status 1, after writing what it was to the marks pipe (its stderr is /dev/null)."""
    try:
        mark(marks_fd, "start")
        os.close(unused_fd)
        quiet()
        set_parent_death_signal(signal.SIGKILL)  # a parent killed mid-trial leaves no server behind
        predict = predictor(model_dir, function_dir)
        mark(marks_fd, "loaded")
        asyncio.run(serve(marked(predict, marks_fd), sock))
        os._exit(0)
    except BaseException as exc:  # noqa: B036 (SystemExit from uvicorn included: the child must not go on)
        with contextlib.suppress(BaseException):
            os.write(marks_fd, f"error {type(exc).__name__}: {exc}".replace("\n", " ").encode() + b"\n")
        os._exit(1)


def mark(fd: int, name: str) -> None:
    """One timestamp on the marks pipe, unbuffered, so it survives the SIGKILL that ends the child."""
    os.write(fd, f"{name} {time.perf_counter()!r}\n".encode())


def quiet() -> None:
    """stdin, stdout and stderr → /dev/null: the parent's stdout is its protocol with the driver."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def predictor(model_dir: Path, function_dir: Path) -> Callable[[list[str]], list[dict[str, Any]]]:
    """The model and the function's preprocessing, loaded as a replica loads them: one ONNX Runtime CPU
    session with runtimes/onnx.py's options (the example asks for cpu "1", so one intra-op thread), and
    featurize imported from the function's folder after the fork (fnserve cannot import it before:
    the fork server serves every function)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    sys.path.insert(0, str(function_dir))
    featurize = importlib.import_module("featurize")
    config = featurize.FeatureConfig(**json.loads((model_dir / "featurizer.json").read_text()))
    labels = json.loads((model_dir / "labels.json").read_text())

    def predict(texts: list[str]) -> list[dict[str, Any]]:
        logits = session.run([output_name], {input_name: featurize.featurize(texts, config)})[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return [{"label": labels[int(row.argmax())], "score": float(row.max())} for row in probabilities]

    return predict


def app_for(predict: Callable[[list[str]], list[dict[str, Any]]]) -> App:
    """A raw ASGI app: ``POST /v1/models/<any>:predict`` with ``{"instances": [text, ...]}`` →
    ``{"predictions": [{"label", "score"}, ...]}``; the least an HTTP server of this model must do."""
    try:
        import orjson

        loads: Callable[[bytes], Any] = orjson.loads
        dumps: Callable[[Any], bytes] = orjson.dumps
    except ImportError:
        loads, dumps = json.loads, lambda value: json.dumps(value).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        answer: dict[str, Any]
        if scope["method"] != "POST" or not (path.startswith("/v1/models/") and path.endswith(":predict")):
            status, answer = 404, {"error": f"no route for {scope['method']} {path}"}
        else:
            try:
                status, answer = 200, {"predictions": predict(loads(body)["instances"])}
            except (ValueError, KeyError, TypeError) as exc:
                status, answer = 400, {"error": f"{type(exc).__name__}: {exc}"}
        content = dumps(answer)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})

    return app


def marked(predict: Callable[[list[str]], list[dict[str, Any]]], marks_fd: int) -> App:
    """The app, marking on the pipe when the first request reaches it (the end of uvicorn's start)."""
    inner = app_for(predict)
    first = True

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal first
        if first and scope["type"] == "http":
            first = False
            mark(marks_fd, "request")
        await inner(scope, receive, send)

    return app


async def serve(app: App, sock: socket.socket) -> None:
    """uvicorn on the inherited socket, as a replica serves on the one fnserve's starter hands over."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **UVICORN))  # type: ignore[arg-type]
    await server.serve(sockets=[sock])


# -- the protocol with the driver -------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a published run: model.onnx, "
                        "featurizer.json, labels.json")
    parser.add_argument("--function-dir", type=Path, required=True, help="a copy of functions/sentiment")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
    model_dir, function_dir = args.model_dir.resolve(), args.function_dir.resolve()
    for needed in (model_dir / "model.onnx", function_dir / "featurize.py"):
        if not needed.is_file():
            raise SystemExit(f"cold_floor: no {needed}")
    warm_up()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a driver that ignores SIGCHLD would leave nothing to wait for
    print("ready", flush=True)
    while line := sys.stdin.readline():
        command = line.strip()
        if not command:
            continue
        if command == "trial":
            print(json.dumps(trial(model_dir, function_dir)), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {command!r} (expected 'trial')"}), flush=True)


if __name__ == "__main__":
    main()
