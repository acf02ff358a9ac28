"""How every fnserve process writes its log: the router, replicas and job wrappers alike.

Two formats, chosen by ``FNSERVE_LOG_FORMAT``: ``text`` for a terminal (one readable line, the fields
after the message as ``key=value``) and ``json`` for a log pipeline (one object per line, the fields as
keys), which is what Loki, Elasticsearch or Cloud Logging parse without a regex. A cluster defaults to
json (the manifests set it), one machine to text.

Every line written while a request is being handled carries its ``request_id`` and, when there is a
trace, its ``trace_id``: the request's middleware puts them in a context variable (:data:`CURRENT`) and
a filter copies them onto each record, so no log call has to pass them. Worker threads started with
``asyncio.to_thread`` or a copied context see them too.

Standard library only: replicas configure logging before they import kserve.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error", "critical")

ACCESS_LOGGER = "fnserve.access"
"""The name on the one line per request (router and replicas alike): see AccessLog."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What identifies the request a line is about."""

    request_id: str
    trace_id: str | None = None
    span_id: str | None = None

    def fields(self) -> dict[str, str]:
        """The ids as every line carries them, first: request_id, then trace_id and span_id when known."""
        ids = {"request_id": self.request_id}
        if self.trace_id is not None:
            ids["trace_id"] = self.trace_id
            if self.span_id is not None:  # a replica knows the trace; the span is FastAPI's
                ids["span_id"] = self.span_id
        return ids


CURRENT: ContextVar[RequestContext | None] = ContextVar("fnserve_request", default=None)

REQUEST_ID_HEADER = b"x-request-id"


def request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The request's id: the caller's ``X-Request-ID`` (its first 128 characters), or a new one."""
    given = next((value for name, value in headers if name == REQUEST_ID_HEADER), b"")
    return given.decode("latin-1")[:128] if given else os.urandom(16).hex()  # uuid4().hex, less the UUID object


_second: tuple[int, str] = (-1, "")


def _utc(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: sortable, and parsed by every log store. The formatted second is
    kept: many lines share it, and strftime is a tenth of an access line's cost."""
    global _second
    whole = int(created)
    second = _second  # read once: another thread may replace it meanwhile
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((created - whole) * 1000):03d}Z"


class _RequestFilter(logging.Filter):
    """Copies the current request's ids onto every record, as it is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_ids"):
            context = CURRENT.get()
            if context is not None:
                record.request_ids = context.fields()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured part of a record: the ids the filter set, then ``extra={"fields": {...}}``."""
    fields: dict[str, Any] = dict(getattr(record, "request_ids", {}))
    more = getattr(record, "fields", None)
    if more:
        fields.update(more)
    return fields


class _LineFormatter(logging.Formatter):
    """A record as one line: what ``line()`` makes of its parts (which AccessLog calls without a record)."""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname, record.name, record.getMessage(), _fields(record),
                         exception)

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any],
             exception: str | None = None) -> str:
        raise NotImplementedError


class JsonFormatter(_LineFormatter):
    """One JSON object per line: time, level, logger, message, then the request's ids and fields."""

    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)  # C-accelerated, reused

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any],
             exception: str | None = None) -> str:
        line: dict[str, Any] = {"time": _utc(created), "level": level.lower(), "logger": logger,
                                "component": self.component, "message": message}
        line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return self._encoder.encode(line)


class TextFormatter(_LineFormatter):
    """``<time> <LEVEL> <logger>: <message> key=value …`` — the fields after the message, so the line
    still reads as a sentence."""

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any],
             exception: str | None = None) -> str:
        line = f"{_utc(created)} {level} {logger}: {_one_line(message)}"
        if fields:
            line += " " + " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        if exception is not None:
            line += "\n" + exception
        return line


class AccessLog:
    """The one line per request, in the format of every other line, written straight to the process's log
    handler: no LogRecord, no walk up the logger tree, no %-formatting — about half of what a line costs
    through ``logging`` — and, like nginx's ``access_log … buffer= flush=``, gathered for at most
    FLUSH_SECONDS (or FLUSH_LINES lines) and written with one flush: it is written on every request, and
    ``make bench`` holds it to ≤ 5% of the router's CPU. A process killed outright loses at most that
    window of access lines; an orderly exit writes them (atexit). ``enabled`` is false when
    FNSERVE_ACCESS_LOG=false or before configure()."""

    FLUSH_SECONDS = 0.05
    FLUSH_LINES = 256

    def __init__(self) -> None:
        self._handler: logging.StreamHandler[TextIO] | None = None
        self._formatter: JsonFormatter | TextFormatter | None = None
        self._pending: list[str] = []
        atexit.register(self.flush)

    @property
    def enabled(self) -> bool:
        return self._handler is not None

    def attach(self, handler: logging.StreamHandler[TextIO] | None, formatter: JsonFormatter | TextFormatter) -> None:
        self.flush()
        self._handler, self._formatter = handler, formatter

    def write(self, message: str, fields: dict[str, Any]) -> None:
        formatter = self._formatter
        if self._handler is None or formatter is None:
            return
        context = CURRENT.get()
        if context is not None:  # the ids first, as on every other line
            fields = {**context.fields(), **fields}
        self._pending.append(formatter.line(time.time(), "INFO", ACCESS_LOGGER, message, fields))
        if len(self._pending) >= self.FLUSH_LINES:
            self.flush()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop to come back: now
                self.flush()

    def flush(self) -> None:
        handler, pending = self._handler, self._pending
        if handler is None or not pending:
            return
        self._pending = []
        handler.acquire()
        try:
            handler.stream.write("\n".join(pending) + "\n")
            handler.stream.flush()
        except (OSError, ValueError):  # a closed or full log stream: lost lines, as logging loses them
            pass
        finally:
            handler.release()


ACCESS = AccessLog()


_UNSAFE = re.compile(r'[\x00-\x20"=\x7f\u0085\u2028\u2029]')
"""What would let a value (a client's path or request id) pass for another field or another line."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _text(value: Any) -> str:
    """A field's value as one token: quoted (JSON's escapes) when it holds a space, a quote, an '=' or a
    control character, so no client-sent value can forge a field or a line; '-' when absent."""
    if value is None:
        return "-"
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    return json.dumps(text, ensure_ascii=False) if (not text or _UNSAFE.search(text)) else text


def _one_line(message: str) -> str:
    """A message with its control characters escaped (a path sent as %0A arrives as a newline)."""
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], message) if _CONTROL.search(message) else message


class LogSettingError(ValueError):
    """FNSERVE_LOG_LEVEL or FNSERVE_LOG_FORMAT holds something else than one of the known values."""


def check(level: str, fmt: str) -> None:
    """Raises LogSettingError naming the variable, the value and what it may be."""
    if level.lower() not in LEVELS:
        raise LogSettingError(f"FNSERVE_LOG_LEVEL={level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise LogSettingError(f"FNSERVE_LOG_FORMAT={fmt!r} is not one of {', '.join(FORMATS)}")


def configure(level: str, fmt: str, component: str, *, access_log: bool = True,
              stream: TextIO | None = None) -> None:
    """The process's one handler on the root logger; the loggers of the servers underneath (uvicorn, KServe)
    are made to go through it, so a line looks the same whoever wrote it. Uvicorn's own access log is off:
    fnserve writes its own line per request (with the ids and timings uvicorn does not have)."""
    check(level, fmt)
    # the logging HOWTO's optimisations for what no fnserve line prints: caller frame, thread, process name
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter(component) if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    ACCESS.attach(handler if access_log else None, formatter)
    handler.addFilter(_RequestFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "kserve", "kserve.trace"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # a library's warning is a line in the same format, not raw stderr
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("opentelemetry.baggage", "opentelemetry.trace.propagation", "opentelemetry.propagators"):
        # a client's malformed baggage or tracestate is dropped; not a warning line per request, echoing it
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # KServe's timing per request: the access line has it
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
