"""``python -m runtimes.server``: one replica of a function — a real KServe ModelServer.

Used by the embedded backend (one process per replica on 127.0.0.1, usually forked from a fork server
that built the ReplicaServer below beforehand) and as the container entry point in a cluster
(``--host 0.0.0.0``, model under /mnt/models). The model is loaded before the server accepts, so no
request is ever answered "not ready": in a container "port accepts connections" already means "model
ready"; on one machine the router binds the listening socket and hands it over, the replica says "ready"
on an inherited pipe once its model is loaded, and requests sent then wait in the accept queue for the
server. Its arguments, the hand-over, the parent it dies with and its process name are the replica
contract (fnserve/replica_contract.py), which the launchers build from too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from fnserve import logs, tracing
from fnserve.replica_contract import (
    LISTEN_FD_ENV,
    PROCESS_NAME,
    ReadyPipe,
    ReplicaArgs,
    StartupTimes,
    die_with_parent,
    inherited_fd,
)

# Imported only when used: a replica of an ONNX function never pays for importing torch.
RUNTIME_CLASSES = {"onnx": "runtimes.onnx:OnnxModel", "torch": "runtimes.torch:TorchModel",
                   "transformers": "runtimes.transformers:TransformersModel"}


def _fail(message: str) -> NoReturn:
    print(f"fnserve replica: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def build_model(args: ReplicaArgs) -> Any:
    """Read the manifest and construct (not yet load) the runtime's model."""
    from fnserve.manifest import ManifestError, load_function  # noqa: PLC0415 (after argv is cleaned)
    from runtimes.handler import HandlerError, load_handler

    try:
        function = load_function(args.manifest or args.function_dir)
    except ManifestError as exc:
        _fail(str(exc))
    spec = function.spec
    target = RUNTIME_CLASSES.get(spec.runtime)
    if target is None:
        _fail(f"runtime {spec.runtime!r} has no predictor in this version (available: "
              f"{', '.join(RUNTIME_CLASSES)})")
    module_name, _, class_name = target.partition(":")
    model_class = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    try:
        handler = load_handler(spec.handler, args.function_dir)
    except HandlerError as exc:
        _fail(str(exc))
    from runtimes.base import cpu_threads

    return model_class(function.name, args.model_dir, handler, gpu=spec.resources.gpu > 0, threads=args.threads,
                       cpu_threads=cpu_threads(spec.resources.cpu), batching=spec.batching,
                       options=spec.transformers, concurrency=spec.scaling.container_concurrency)


def configure_logging(env: Mapping[str, str]) -> None:
    """The router's log settings, which the backend passes on (FNSERVE_LOG_LEVEL, _FORMAT, _ACCESS_LOG)."""
    try:
        logs.configure(env.get("FNSERVE_LOG_LEVEL", "info"), env.get("FNSERVE_LOG_FORMAT", "text"), "replica",
                       access_log=env.get("FNSERVE_ACCESS_LOG", "true").lower() not in ("0", "false", "no"))
    except logs.LogSettingError as exc:
        _fail(str(exc))


class _Served:
    """The name of the model a prepared server serves, for its middlewares: set when one is bound."""

    name = ""


STAND_IN = "fnserve-warm-up"
"""The model a prepared server answers its warm-up requests with, removed before any real one is bound."""

_V1_BODY = b'{"instances": [[1.0]]}'
_V2_BODY = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}'
WARM_UP = (("GET", "/v2/health/live", b""), ("GET", "/v2/health/ready", b""), ("GET", "/v1/models", b""),
           ("GET", f"/v2/models/{STAND_IN}/ready", b""), ("POST", f"/v1/models/{STAND_IN}:predict", _V1_BODY),
           ("POST", f"/v2/models/{STAND_IN}/infer", _V2_BODY))
"""Requests answered in-process before the fork: they build Starlette's middleware stack and FastAPI's
per-route state, which both wait for a first request, and take the paths a request takes through KServe's
app (decoding, the data plane, encoding), so a replica's first answer pays for none of it."""


def _stand_in() -> Any:
    import kserve  # noqa: PLC0415

    class StandIn(kserve.Model):
        """Answers what it is given; no threads, nothing loaded."""

        def __init__(self) -> None:
            super().__init__(STAND_IN)
            self.ready = True

        async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> Any:
            if isinstance(payload, dict):
                return {"predictions": payload.get("instances", [])}
            from kserve.protocol.infer_type import InferOutput, InferResponse  # noqa: PLC0415

            tensor = payload.inputs[0]
            output = InferOutput(tensor.name, tensor.shape, tensor.datatype, tensor.data)
            return InferResponse(payload.id or "", STAND_IN, [output])

    return StandIn()


def _forget_metrics(model_name: str) -> None:
    """Take the stand-in's series out of KServe's latency histograms: /metrics shows served models only."""
    from kserve import metrics  # noqa: PLC0415

    for histogram in (metrics.PRE_HIST_TIME, metrics.POST_HIST_TIME, metrics.PREDICT_HIST_TIME,
                      metrics.EXPLAIN_HIST_TIME):
        with contextlib.suppress(KeyError):
            histogram.remove(model_name)


async def _warm_up(app: Any) -> None:
    for method, path, body in WARM_UP:
        headers = [(b"host", b"warm-up"), (b"user-agent", b"fnserve-probe/1 (warm-up)")]
        if body:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
                 "state": {}}
        sent: list[dict[str, Any]] = []

        async def receive(body: bytes = body) -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        await app(scope, receive, send)
        status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
        if status != 200:  # KServe changed: say so, but a replica that would still serve is no reason to stop
            logging.getLogger("fnserve.runtime").warning("warm-up request %s %s answered %s", method, path, status)


class ReplicaServer:
    """KServe's ModelServer for one model, built in two halves so that a fork server can do the first once.

    ``__init__`` does everything that does not depend on the function: KServe's FastAPI app with all its
    routes, middlewares and error handlers, fnserve's OpenAI and generate routes, uvicorn's configuration
    (its protocol classes imported). That is ~100 ms that every forked replica would otherwise repeat after
    the fork. ``serve`` binds the loaded model to all of it and starts serving — on a socket handed over
    by the starter, or by binding host:port itself (a container).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        import kserve  # noqa: PLC0415
        from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app  # noqa: PLC0415
        from kserve.model_server import args as kserve_args  # noqa: PLC0415
        from kserve.protocol.rest.server import RESTServer  # noqa: PLC0415

        kserve_args.configure_logging = False  # logging is fnserve's (configure_logging above), in its format
        # KServe's own use of a FastAPI class FastAPI deprecates: nothing a function's author can act on
        warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

        from runtimes import errors, generate_routes, observe, openai_routes  # noqa: PLC0415
        from runtimes.framing import CheckedDataPlane  # noqa: PLC0415

        class _ModelServer(kserve.ModelServer):
            """Its data plane checks V2 framing before KServe decodes a request."""

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.dataplane = CheckedDataPlane(model_registry=self.registered_models)

        self.app = app
        self.server = server = _ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False)
        # what ModelServer.start would build for one worker, built now; start() itself is not used (see serve)
        self.rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
                               server.http_port, access_log_format=server.access_log_format, workers=1,
                               grace_period=server.grace_period, event_loop=server.event_loop,
                               timeout_keep_alive=server.timeout_keep_alive, ssl_certfile=server.ssl_certfile,
                               ssl_keyfile=server.ssl_keyfile)
        self.rest.config.host = host  # KServe always binds 0.0.0.0; a replica on a shared machine stays on loopback
        self.rest.config.ws = "none"  # no route speaks WebSocket: nothing to import for it
        self.rest.create_application()
        self.openai = openai_routes.install(app)
        self.generate = generate_routes.install(app)
        self.served = _Served()
        errors.install(app, self.served)  # after KServe's handlers (create_application added them)
        app.add_middleware(observe.RequestContext, model=self.served)  # outermost: added last
        self.rest.config.load()
        self.served.name = STAND_IN
        server.registered_models.update(_stand_in())
        loop = asyncio.new_event_loop()  # not asyncio.run: KServe's start asks for the current loop later
        try:
            loop.run_until_complete(_warm_up(self.rest.config.loaded_app))
        finally:
            loop.close()
            server.registered_models.unload(STAND_IN)
            _forget_metrics(STAND_IN)

    def serve(self, model: Any, sockets: list[socket.socket] | None = None,
              on_ready: Callable[[], None] | None = None, on_serving: Callable[[], None] | None = None) -> None:
        """Serve the loaded ``model`` until stopped, on ``sockets`` or else on the host and port it was
        built for. ``on_ready`` once nothing but the server's start is left (requests sent then are
        answered), ``on_serving`` once the server accepts connections."""
        self.served.name = model.name
        self.openai.bind(model)
        self.generate.bind(model)
        server, uvicorn_server = self.server, self.rest._server  # noqa: SLF001 (KServe keeps it private)
        if on_serving is not None:
            startup = uvicorn_server.startup

            async def startup_then_tell(sockets: list[socket.socket] | None = None) -> None:
                await startup(sockets=sockets)
                if not uvicorn_server.should_exit:  # its start failed (the app's lifespan): it is not serving
                    on_serving()

            uvicorn_server.startup = startup_then_tell
        # ModelServer.start for one REST worker, on the prepared server and the given sockets
        server._register_and_check_atleast_one_model_is_ready([model])  # noqa: SLF001
        server._rest_server = self.rest  # noqa: SLF001
        server.servers.append(uvicorn_server.serve(sockets=sockets))
        server.setup_event_loop()
        server.register_signal_handler()
        if on_ready is not None:
            on_ready()
        asyncio.run(server._serve())  # noqa: SLF001


def prepare(runtime: str) -> ReplicaServer:
    """What a fork server does once for every replica of ``runtime`` it will fork: import what a replica
    imports (the runtime's module and library, the manifest's models, the handler loader), run argparse
    once (its first parse compiles what later ones reuse), and build the server."""
    target = RUNTIME_CLASSES.get(runtime)
    if target is None:
        raise ValueError(f"unknown runtime {runtime!r}")
    import fnserve.manifest  # noqa: F401, PLC0415
    import runtimes.handler  # noqa: F401, PLC0415

    __import__(target.partition(":")[0])
    ReplicaArgs.parse(ReplicaArgs(Path("function"), Path("model")).to_argv())
    return ReplicaServer("127.0.0.1")


def main(argv: list[str] | None = None, prepared: ReplicaServer | None = None) -> None:
    """Run one replica; ``prepared`` is the server a fork server built before forking it."""
    started = time.time()
    args = ReplicaArgs.parse(argv)
    die_with_parent()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(PROCESS_NAME.encode()))  # PR_SET_NAME
    configure_logging(os.environ)
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported; keep ours away from it
    listen_fd, ready = inherited_fd(LISTEN_FD_ENV), ReadyPipe.from_env()
    sockets = [socket.socket(fileno=listen_fd)] if listen_fd is not None else None
    from runtimes.base import ModelLoadError

    # a prepared server was built for a handed-over socket; without one, one for --host and --port
    server = prepared if prepared is not None and sockets else ReplicaServer(args.host, args.port)
    model = build_model(args)
    built = time.time()
    try:
        model.load()
    except (FileNotFoundError, ModelLoadError) as exc:
        _fail(str(exc))
    loaded = time.time()
    tracing.configure("fnserve-replica", {"fnserve.function": model.name})
    address = sockets[0].getsockname() if sockets else (args.host, args.port)
    logging.getLogger("fnserve.runtime").info("%s: serving on http://%s:%d", model.name, *address[:2])

    def ready_now() -> None:  # requests may come from now on: they wait in the accept queue
        if not ready.send(StartupTimes(started, built, loaded).to_event()):
            _fail("the router that started this replica stopped waiting for it; exiting")

    def serving() -> None:
        ready.send({"event": "serving", "at": time.time()})
        ready.close()

    try:
        server.serve(model, sockets, ready_now, serving)
    finally:  # a forked replica ends with os._exit, which runs no atexit hook: what is buffered goes now
        logs.ACCESS.flush()
        tracing.shutdown()


if __name__ == "__main__":
    main()
