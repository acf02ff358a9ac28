"""RequestContextMiddleware, the outermost step of every request: its id, its trace, its access log line.

- **Request id**: the client's ``X-Request-ID`` (up to 128 characters) or a new one, echoed on the answer,
  sent to the replica, and in every error body.
- **Trace**: with tracing on, a SERVER span continuing the client's ``traceparent``; the steps below
  (auth, admission, the wait for a replica, the upstream call) are its children. Without it, the client's
  trace id is still logged.
- **Context**: both ids go into :data:`fnserve.logs.CURRENT`, so every line logged while the request is
  handled carries them.
- **Access log**: one line when the request ends (``fnserve.access``): method, path, function, revision,
  status, duration, upstream time, cold start, key id, bytes in and out. Health probes answered 2xx are
  not logged: a kubelet asks every few seconds and the lines would bury the requests.

Pure ASGI (BaseHTTPMiddleware costs about 80% of the router's throughput); the line is built from
numbers the request path has already measured.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnserve import logs, tracing
from fnserve.router import invocation as invocations
from fnserve.router.body import BODY_BYTES

_PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = scope["headers"]
        rid = logs.request_id(headers)
        scope.setdefault("state", {})["request_id"] = rid
        raw = rid.encode("latin-1")
        span: Any = None
        detach: object = None
        if tracing.enabled():
            span, detach = tracing.start_server_span(scope["method"], headers, {
                "http.request.method": scope["method"], "url.path": scope["path"], "fnserve.request_id": rid})
            trace_id, span_id = tracing.ids(span)
        else:
            trace_id, span_id = tracing.client_trace_id(headers), None
        current = logs.CURRENT.set(logs.RequestContext(rid, trace_id, span_id))
        status, bytes_out = 0, 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":  # nothing else sets it: the proxy drops a replica's
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (logs.REQUEST_ID_HEADER, raw)]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500  # answered by the server-error handler outside this middleware
            raise
        finally:
            invocation = invocations.of(scope)
            if span is not None:
                route = invocation.route if invocation is not None else getattr(scope.get("route"), "path", None)
                tracing.end_server_span(span, detach, status, route, scope["method"])
            if logs.ACCESS.enabled and not (scope["path"] in _PROBES and status < 300):
                _log_access(scope, invocation, status or 499, started, _bytes_in(scope), bytes_out)
            logs.CURRENT.reset(current)


def _bytes_in(scope: Scope) -> int:
    """The body's declared length; without one (chunked, or none), what the body guard counted as read."""
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if length is None:
        return int(scope["state"].get(BODY_BYTES, 0))
    return int(length) if length.isdigit() else 0


def _log_access(scope: Scope, invocation: invocations.Invocation | None, status: int, started: float,
                bytes_in: int, bytes_out: int) -> None:
    """The access line: the same fields in both formats, the message a readable summary of them."""
    duration_ms = (time.perf_counter() - started) * 1000
    method, path = scope["method"], scope["path"]
    fields: dict[str, Any] = {"method": method, "path": path, "status": status,
                              "duration_ms": round(duration_ms, 2)}
    if invocation is not None:
        fields["function"] = invocation.function or None
        fields["revision"] = invocation.revision.number if invocation.revision is not None else None
        fields["upstream_ms"] = round(invocation.upstream_ms, 2)
        fields["cold_start_ms"] = None if invocation.cold_start_ms is None else round(invocation.cold_start_ms, 1)
        revision = invocation.revision  # a caller refused by auth has no principal, and is not "public"
        fields["key_id"] = (invocation.principal.key_id if invocation.principal is not None else
                            "public" if revision is not None and revision.function.spec.auth.public else None)
    else:
        principal = scope.get("state", {}).get("principal")
        fields["key_id"] = principal.key_id if principal is not None else None
    fields["bytes_in"] = bytes_in
    fields["bytes_out"] = bytes_out
    client = scope.get("client")
    fields["client"] = client[0] if client else None
    logs.ACCESS.write(f"{method} {path} {status} {duration_ms:.1f} ms", fields)
