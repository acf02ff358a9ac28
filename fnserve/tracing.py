"""OpenTelemetry traces for the router and the replicas, configured by the standard ``OTEL_*`` variables.

Tracing is on when an OTLP endpoint is named (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT``) and not turned off (``OTEL_SDK_DISABLED=true``,
``OTEL_TRACES_EXPORTER=none``). Then the SDK's TracerProvider exports spans in batches over OTLP/HTTP
(protobuf), and everything else is the SDK's own reading of the environment: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (parent-based always-on by default),
``OTEL_EXPORTER_OTLP_HEADERS`` / ``_TIMEOUT``, ``OTEL_BSP_*``. When it is off, nothing is set up:
:func:`span` is a shared null context and the request path pays one boolean test.

W3C trace context crosses the processes: the router continues a client's ``traceparent`` (or starts a
trace), and sends the replica its own upstream span's; the replica continues that. Without tracing the
router passes a client's ``traceparent`` to the replica untouched, and both still log its trace id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

log = logging.getLogger("fnserve.tracing")

_enabled = False
_NULL = contextlib.nullcontext()
TRACER_NAME = "fnserve"


def enabled() -> bool:
    """Whether spans are recorded and exported in this process."""
    return _enabled


def endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """Where spans go (None: tracing is off), read as the OTLP exporter reads it."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return None
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def configure(service_name: str, attributes: Mapping[str, str] | None = None) -> str | None:
    """Install the SDK's TracerProvider with an OTLP/HTTP exporter when an endpoint is configured; returns
    that endpoint, or None when tracing is off. ``service_name`` applies when ``OTEL_SERVICE_NAME`` does not
    name one."""
    global _enabled
    where = endpoint()
    if where is None:
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; spans are sent as http/protobuf to %s",
                    protocol, where)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name, **(attributes or {})})
    # the environment's own attributes (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) win over ours
    resource = resource.merge(OTELResourceDetector().detect())
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource({"service.name": os.environ["OTEL_SERVICE_NAME"]}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    return where


def shutdown() -> None:
    """Export what is still buffered (at the process's end; the SDK's atexit hook does it too)."""
    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if _enabled and stop is not None:
        stop()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


class _AsgiHeaders(Getter[Sequence[tuple[bytes, bytes]]]):
    """Reads a propagation header out of ASGI's raw (lower-case bytes) header list."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_GETTER = _AsgiHeaders()
PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def extract(headers: Sequence[tuple[bytes, bytes]]) -> Context:
    """The context a request's ``traceparent`` (and the other configured propagators' headers) carry."""
    return propagate.extract(headers, getter=_GETTER)


def inject(context: Context | None = None) -> list[tuple[bytes, bytes]]:
    """The propagation headers for a request sent on from ``context`` (default: the current one)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in carrier.items()]


_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def client_trace_id(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The trace id of a valid W3C ``traceparent`` among ``headers`` (the specification's grammar: lower-case
    hex, version not ff, no all-zero ids), read without the SDK: what the logs carry when this process
    records no spans. Anything else is no trace."""
    for name, value in headers:
        if name == b"traceparent":
            value = value.strip()
            match = _TRACEPARENT.match(value)
            if match is None or (value[:2] == b"00" and len(value) != 55):  # version 00 has four parts
                return None
            return match.group(1).decode("ascii")
    return None


def ids(span: Span) -> tuple[str | None, str | None]:
    """(trace id, span id) of a span as the logs write them, or (None, None) for an invalid one."""
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def start_server_span(name: str, headers: Sequence[tuple[bytes, bytes]],
                      attributes: Mapping[str, Any]) -> tuple[Span, object]:
    """A SERVER span continuing the request's trace, made current; returns it and the token to detach."""
    span = tracer().start_span(name, context=extract(headers), kind=SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def continue_trace(headers: Sequence[tuple[bytes, bytes]]) -> object:
    """Make the context a request's headers carry the current one (no span of its own); returns the token
    for :func:`leave`."""
    return otel_context.attach(extract(headers))


def leave(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def end_server_span(span: Span, token: object, status: int, route: str | None, method: str) -> None:
    """Name the span after its route (OpenTelemetry's ``{method} {route}``), set its status, end it."""
    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    leave(token)


def span(name: str, attributes: Mapping[str, Any] | None = None,
         kind: SpanKind = SpanKind.INTERNAL) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one for a step of the request: nothing when tracing is off, or when the
    request's trace is not sampled (its children would not be either; skipping them saves most of what a
    sampled-out request costs)."""
    if not _enabled or not trace.get_current_span().is_recording():
        return _NULL
    return tracer().start_as_current_span(name, kind=kind, attributes=attributes)


def backdated(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None) -> None:
    """A finished child span for a step whose times are known only afterwards (a cold start inside the
    wait for a replica)."""
    if _enabled and trace.get_current_span().is_recording():
        tracer().start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)

