"""The replica's error answers: every one JSON with a string ``"error"`` and the status that fits.

KServe's FastAPI app leaves three kinds of answer in other shapes: its request validation is a 422
``{"detail": [...]}``, unknown routes and methods are ``{"detail": "..."}``, versioned routes are a 501,
and an exception no handler claims reaches uvicorn, which then closes the connection after the 500
without a ``Connection: close`` — so the router's next request on that pooled connection failed too.
``install()`` fixes each on KServe's app before it starts: the handlers below for the first three,
and an innermost-but-one ASGI guard that turns any escaping exception into a JSON 500 on a connection
that stays usable. A client's mistake is logged as one line, never a traceback.

Under ``/openai/`` the same answers take OpenAI's error shape instead (the replica contract's
``openai_error``, which the router answers with too), so an OpenAI client reads KServe's 404, 405 and
422 as it reads the routes' own errors.
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

from fnserve.replica_contract import OPENAI_PREFIX, openai_error
from runtimes.observe import Named

log = logging.getLogger("fnserve.runtime")

#: Path segments FastAPI puts in front of a body field's location; a client knows its fields by name.
_LOCATION_NOISE = frozenset({"body", "InferenceRequest", "bytes"})


class RequestError(Exception):
    """A route's refusal: its status and message, and for OpenAI clients the field at fault (``param``) and
    a machine-readable ``code``. Rendered in the shape of the request's path (see ``error_body``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def bad_request(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param)


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


def error_body(path: str, status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The error shape a request for ``path`` gets: OpenAI's under /openai/, the platform's elsewhere."""
    if path.startswith(OPENAI_PREFIX):
        return {"error": openai_error(status, message, param=param, code=code)}
    return {"error": message}


def _error(request: Request, status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message), status, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    body = exc.errors()
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in body):
        message = "request body is empty: expected a JSON inference request"
    else:
        what = "request" if request.url.path.startswith(OPENAI_PREFIX) else "inference request"
        message = f"invalid {what}: {describe_validation(list(body))}"
    log.info("%s %s: 400 %s", request.method, request.url.path, message)
    return _error(request, 400, message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail)  # FastAPI's subclass allows any JSON value here
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method not allowed: {request.method} {request.url.path}"
    return _error(request, exc.status_code, detail, exc.headers)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    log.info("%s %s: 400 %s", request.method, request.url.path, exc)
    return _error(request, 400, str(exc))


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    log.log(logging.INFO if exc.status < 500 else logging.ERROR, "%s %s: %d %s", request.method,
            request.url.path, exc.status, exc.message)
    return JSONResponse(error_body(request.url.path, exc.status, exc.message, exc.param, exc.code), exc.status)


async def _not_implemented(request: Request, exc: Exception) -> Response:
    if "/versions/" in request.url.path:  # KServe has no model versions; the router maps them to revisions
        return _error(request, 404, f"model versions are not served by a replica: use {request.url.path.split('/versions/')[0]}"
                           f"{'/infer' if request.url.path.endswith('/infer') else ''}")
    log.exception("%s %s: not implemented", request.method, request.url.path)
    return _error(request, 500, f"not implemented: {exc}")


class ContainErrors:
    """Answers any exception that escaped every handler with a JSON 500, so it never reaches uvicorn
    (which would drop the connection). Pure ASGI, added to KServe's app as a user middleware."""

    def __init__(self, app: ASGIApp, model: Named) -> None:
        self.app = app
        self.model = model

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
            body = orjson.dumps(error_body(scope.get("path", ""), 500, f"internal error in function "
                                                f"{self.model.name!r}: {type(exc).__name__}: {exc}"))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, model: Named) -> None:
    """Give KServe's app the handlers above; call before the server starts (KServe adds its own for
    its error classes when it starts, none of which these replace)."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotImplementedError, _not_implemented)
    app.add_exception_handler(RequestError, _request_error)
    app.add_middleware(ContainErrors, model=model)
