"""The replica's side of a request's trail: its ids in every log line, its span, its one access line.

``RequestContext`` is the outermost middleware of KServe's app. It takes the ``X-Request-ID`` the router
sent (or makes one, for a replica called directly) and the trace the router's ``traceparent`` names, and
writes one ``fnserve.access`` line per request. With tracing on, the router's upstream span becomes the
current context: FastAPI's own telemetry (≥ 0.16x) opens the replica's SERVER span under it, named by
route, and the model's preprocess / model / postprocess spans (runtimes/base.py) go below that — or
straight below the router's span with a FastAPI that records none. Health probes answered 2xx — the
router's and the kubelet's, every few seconds — are not logged, so ``fnserve logs`` shows requests.
"""

from __future__ import annotations

import time
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnserve import logs, tracing

_PROBE_AGENTS = (b"fnserve-probe", b"kube-probe")


class Named(Protocol):
    """What the middlewares need of the model: its name, read per request, since a fork server builds
    the app (middlewares included) before the model it serves exists."""

    @property
    def name(self) -> str: ...


def _header(scope: Scope, name: bytes) -> bytes:
    return next((v for k, v in scope["headers"] if k == name), b"")


class RequestContext:
    def __init__(self, app: ASGIApp, model: Named) -> None:
        self.app = app
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = logs.request_id(scope["headers"])
        detach: object = None
        if tracing.enabled() and scope.get("fastapi.telemetry") is None:
            # no server span from FastAPI: the router's upstream span is the parent of what this one records
            detach = tracing.continue_trace(scope["headers"])
        trace_id = tracing.client_trace_id(scope["headers"])
        current = logs.CURRENT.set(logs.RequestContext(rid, trace_id))
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            if detach is not None:
                tracing.leave(detach)
            probe = _header(scope, b"user-agent").startswith(_PROBE_AGENTS) and status < 300
            if not probe and logs.ACCESS.enabled:
                duration_ms = (time.perf_counter() - started) * 1000
                method, path = scope["method"], scope["path"]
                logs.ACCESS.write(f"{method} {path} {status or 499} {duration_ms:.1f} ms",
                                  {"method": method, "path": path, "status": status or 499,
                                   "duration_ms": round(duration_ms, 2), "function": self.model.name})
            logs.CURRENT.reset(current)
