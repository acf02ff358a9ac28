"""The replica's error answers: every one JSON with a string ``"error"`` and the status that fits.

KServe's FastAPI app leaves three kinds of answer in other shapes: its request validation is a 422
``{"detail": [...]}``, unknown routes and methods are ``{"detail": "..."}``, versioned routes are a 501,
and an exception no handler claims reaches uvicorn, which then closes the connection after the 500
without a ``Connection: close`` — so the router's next request on that pooled connection failed too.
``install()`` fixes each on KServe's app before it starts: the handlers below for the first three,
and an innermost-but-one ASGI guard that turns any escaping exception into a JSON 500 on a connection
that stays usable. A client's mistake is logged as one line, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from kserve.errors import InvalidInput
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("fnserve.runtime")

#: Path segments FastAPI puts in front of a body field's location; a client knows its fields by name.
_LOCATION_NOISE = frozenset({"body", "InferenceRequest", "bytes"})


def describe_validation(errors: list[Any], limit: int = 5) -> str:
    """FastAPI's validation errors as one readable line: ``inputs.0.shape.0: Input should be …``."""
    # a V2 body may also be raw bytes (binary tensors): that alternative's complaint only adds noise
    errors = [e for e in errors if tuple(e.get("loc", ()))[-1:] != ("bytes",)] or errors
    parts = []
    for error in errors[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in _LOCATION_NOISE)
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    body = exc.errors()
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in body):
        message = "request body is empty: expected a JSON inference request"
    else:
        message = f"invalid inference request: {describe_validation(list(body))}"
    log.info("%s %s: 400 %s", request.method, request.url.path, message)
    return _error(400, message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail)  # FastAPI's subclass allows any JSON value here
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method not allowed: {request.method} {request.url.path}"
    return _error(exc.status_code, detail, exc.headers)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    log.info("%s %s: 400 %s", request.method, request.url.path, exc)
    return _error(400, str(exc))


async def _not_implemented(request: Request, exc: Exception) -> Response:
    if "/versions/" in request.url.path:  # KServe has no model versions; the router maps them to revisions
        return _error(404, f"model versions are not served by a replica: use {request.url.path.split('/versions/')[0]}"
                           f"{'/infer' if request.url.path.endswith('/infer') else ''}")
    log.exception("%s %s: not implemented", request.method, request.url.path)
    return _error(500, f"not implemented: {exc}")


class ContainErrors:
    """Answers any exception that escaped every handler with a JSON 500, so it never reaches uvicorn
    (which would drop the connection). Pure ASGI, added to KServe's app as a user middleware."""

    def __init__(self, app: ASGIApp, model_name: str = "") -> None:
        self.app = app
        self.model_name = model_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:  # half a response is already out; only closing the connection can say so
                raise
            log.exception("%s %s: unhandled error", scope.get("method"), scope.get("path"))
            body = orjson.dumps({"error": f"internal error in function {self.model_name!r}: "
                                          f"{type(exc).__name__}: {exc}"})
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, model_name: str) -> None:
    """Give KServe's app the handlers above; call before the server starts (KServe adds its own for
    its error classes when it starts, none of which these replace)."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotImplementedError, _not_implemented)
    app.add_middleware(ContainErrors, model_name=model_name)
