"""The OpenAI error shape, for every answer under ``/openai/`` — the replica's own and KServe's.

OpenAI's clients read ``{"error": {"message", "type", "param", "code"}}`` (the official client raises
``BadRequestError``, ``NotFoundError``… from the status and shows the message). Everywhere else a
replica answers ``{"error": "message"}`` (runtimes/errors.py), which that client would show as a bare
dict; errors.py asks ``is_openai_path`` which of the two a request gets. OpenAI's ``param`` (the field
at fault) and ``code`` (``model_not_found``) come from the ``RequestError`` a route raised.
"""

from __future__ import annotations

from typing import Any

PREFIX = "/openai/"

#: OpenAI's error types by status (what its API answers for each).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_body(status: int, message: str, param: str | None = None, code: str | None = None,
                type: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or error_type(status), "param": param, "code": code}}
