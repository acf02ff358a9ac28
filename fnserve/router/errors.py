"""Request ids and the one JSON error shape every router answer uses, and the one table that maps the
errors services raise to HTTP answers.

KServe's and Triton's clients read a top-level ``"error"`` string, so every error body has one, plus
the request id that also appears in the logs and the ``X-Request-ID`` header. Under ``/openai/`` the
same errors take OpenAI's shape — ``{"error": {"message", "type", "param", "code"}}`` — because the
official clients build their exceptions from it; which shape is decided here, by the path, once. Services raise typed
errors (a BackendError carries its status and Retry-After; a rejected deploy its problems); the app
registers ``EXCEPTION_HANDLERS`` once, so no handler catches and translates them itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from fnserve.backends.base import BackendError
from fnserve.database import StoreRefused, StoreUnavailable
from fnserve.manifest import Problem
from fnserve.replica_contract import OPENAI_PREFIX
from fnserve.replica_contract import openai_error as contract_openai_error
from fnserve.router.services.functions import DeployRejected


class BadRequest(Exception):
    """A request the client must change: a 400 naming every problem found."""

    status = 400

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def request_id(request: Request | Scope) -> str:
    """The id RequestContextMiddleware (router/access.py) gave the request (of a Request or its ASGI scope)."""
    scope = request.scope if isinstance(request, Request) else request
    return scope.get("state", {}).get("request_id", "")


_TOKEN_LIMITS = ("tpm", "tpd")


def openai_error(status: int, message: str, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI's error object (the replica contract's) for a router answer of ``status``: a 429 says whether
    tokens or requests ran out; ``param``, ``code`` and ``type`` in ``fields`` win, the rest is added."""
    extra = dict(fields or {})
    kind: str | None = None
    code: str | None = {401: "invalid_api_key", 404: "not_found"}.get(status)
    if status == 429:
        kind, code = ("tokens" if extra.get("limit") in _TOKEN_LIMITS else "requests"), "rate_limit_exceeded"
    return {**contract_openai_error(status, message, param=extra.pop("param", None), code=extra.pop("code", code),
                                    type=extra.pop("type", kind)), **extra}


def error_body(message: str, rid: str, fields: Mapping[str, Any] | None = None, *, status: int = 400,
               openai: bool = False) -> bytes:
    """The error shape as bytes (rendered as Starlette's JSONResponse would); ``fields`` are added to it.
    ``openai``: OpenAI's shape for an answer of ``status``, the request id inside its error object."""
    data = {"error": {**openai_error(status, message, fields), "requestId": rid}} if openai else \
        {"error": message, "requestId": rid, **(fields or {})}
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def error_response(request: Request, status: int, message: str, *, retry_after: int | None = None,
                   headers: Mapping[str, str] | None = None,
                   fields: Mapping[str, Any] | None = None) -> Response:
    """The one error shape; ``fields`` are added to it (a key id, the problems, the limit that was hit)."""
    merged = {**(headers or {}), **({"Retry-After": str(retry_after)} if retry_after is not None else {})}
    body = error_body(message, request_id(request), fields, status=status,
                      openai=request.scope["path"].startswith(OPENAI_PREFIX))
    return Response(body, status, merged or None, media_type="application/json")


def problems(items: list[Problem]) -> list[dict[str, str]]:
    return [{"path": p.path, "message": p.message} for p in items]


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error_response(request, exc.status, str(exc), fields={"problems": problems(exc.problems)} if exc.problems else None)


async def _store_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreRefused)
    return error_response(request, exc.status, str(exc))


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """The state database is down: the admin API cannot read or change anything, and says so."""
    return error_response(request, StoreUnavailable.status, str(exc), retry_after=2,
                          fields={"reason": "StoreUnavailable"})


async def _backend_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendError)
    return error_response(request, exc.status, str(exc), retry_after=exc.retry_after)


def exception_handlers() -> dict[Any, Any]:
    """Every typed error a service raises, mapped to its answer (registered once by create_app)."""
    async def rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DeployRejected)
        fields: dict[str, Any] = {"problems": problems(exc.problems)}
        if exc.reason:
            fields["reason"] = exc.reason
        return error_response(request, exc.status, str(exc), fields=fields)

    return {BadRequest: _bad_request, BackendError: _backend_error, DeployRejected: rejected,
            StoreUnavailable: store_unavailable, StoreRefused: _store_refused}
