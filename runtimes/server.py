"""``python -m runtimes.server``: one replica of a function — a real KServe ModelServer.

Used by the embedded backend (one process per replica, bound to 127.0.0.1) and as the container entry
point in a cluster (``--host 0.0.0.0``, model under /mnt/models). The model is loaded before the server
opens its port, so "port accepts connections" already means "model ready". Its arguments, the parent
it dies with and its process name are the replica contract (fnserve/replica_contract.py), which the
launchers build from too.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any, NoReturn

from fnserve import logs, tracing
from fnserve.replica_contract import PROCESS_NAME, STARTUP_FILE_ENV, ReplicaArgs, die_with_parent, write_startup

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


def serve(model: Any, host: str, port: int) -> None:
    """Start a ModelServer for an already loaded model on host:port (blocks until stopped)."""
    import kserve  # noqa: PLC0415
    from kserve.model_server import app  # noqa: PLC0415
    from kserve.model_server import args as kserve_args  # noqa: PLC0415

    kserve_args.configure_logging = False  # logging is fnserve's (configure_logging above), in its format
    # KServe's own use of a FastAPI class FastAPI deprecates: nothing a function's author can act on
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

    from runtimes import errors, generate_routes, observe, openai_routes
    from runtimes.framing import CheckedDataPlane

    class _BoundModelServer(kserve.ModelServer):
        """KServe always binds 0.0.0.0; a replica on a shared machine must stay on loopback. Its data plane
        checks V2 framing first, and its app gets fnserve's error answers once KServe has added its own,
        and the OpenAI and generate routes (which answer only what fits the model's task)."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.dataplane = CheckedDataPlane(model_registry=self.registered_models)

        def setup_event_loop(self) -> None:
            rest = getattr(self, "_rest_server", None)
            if rest is not None:
                rest.config.host = host
                kserve_setup = rest.create_application

                def create_application() -> None:
                    kserve_setup()
                    errors.install(app, model.name)
                    openai_routes.install(app, model)
                    generate_routes.install(app, model)
                    app.add_middleware(observe.RequestContext, model_name=model.name)  # outermost: added last

                rest.create_application = create_application
            super().setup_event_loop()

    server = _BoundModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False)
    server.start([model])


def main(argv: list[str] | None = None) -> None:
    args = ReplicaArgs.parse(argv)
    die_with_parent()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(PROCESS_NAME.encode()))  # PR_SET_NAME
    configure_logging(os.environ)
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported; keep ours away from it
    from runtimes.base import ModelLoadError

    model = build_model(args)
    load_started = time.time()
    try:
        model.load()
    except (FileNotFoundError, ModelLoadError) as exc:
        _fail(str(exc))
    if os.environ.get(STARTUP_FILE_ENV):  # the starter splits this replica's cold start with it
        try:
            write_startup(os.environ[STARTUP_FILE_ENV], load_started, time.time())
        except OSError as exc:  # a timing lost is no reason not to serve
            logging.getLogger("fnserve.runtime").warning("cannot write the start-up timing: %s", exc)
    tracing.configure("fnserve-replica", {"fnserve.function": model.name})
    logging.getLogger("fnserve.runtime").info("%s: serving on http://%s:%d", model.name, args.host, args.port)
    try:
        serve(model, args.host, args.port)
    finally:  # a forked replica ends with os._exit, which runs no atexit hook: what is buffered goes now
        logs.ACCESS.flush()
        tracing.shutdown()


if __name__ == "__main__":
    main()
