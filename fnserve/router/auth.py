"""AuthMiddleware: who is calling, checked before anything else is done for them (pure ASGI).

Order of checks: no key → 401 with WWW-Authenticate; bad, unknown, revoked or expired key → 401;
valid key without the scope for this function, for the admin API (``admin``; /api/me opens to any
valid key, a function's example and stats to a key that may invoke it) or for /metrics (``metrics``, or
``admin``) → 403. Health, readiness and the
OpenAPI document stay open; a function with ``spec.auth.public: true`` needs no key. Under
``/openai/`` any other request needs a valid key (the model list, an unknown model), as OpenAI's own
API does: which functions exist is no stranger's business. Keys themselves
(format, hashing, caches) are the key service's (router/services/keys.py).
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from fnserve import tracing
from fnserve.database import StoreUnavailable
from fnserve.replica_contract import OPENAI_PREFIX
from fnserve.router import invocation as invocations
from fnserve.router.errors import error_response, store_unavailable
from fnserve.router.services.functions import FunctionService
from fnserve.router.services.keys import AuthError, KeyService

# A path under a function that is no inference request of it still needs that function's key: its answer
# (404, 405) is the caller's business only.
log = logging.getLogger("fnserve.router")

_UNDER_FUNCTION = re.compile(r"^/v[12]/models/([^/:]+)")


def _token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, credentials = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


METRICS_PATH = "/metrics"


def is_admin(path: str) -> bool:
    """A path of the admin API (the admin scope opens it)."""
    return path.startswith("/api/") or path == "/api"


ME_PATH = "/api/me"
"""An admin-API path any valid key opens: what the key may know of itself."""
_INVOKERS_VIEW = re.compile(r"^/api/functions/([^/]+)/(?:example|stats)$")
"""Admin-API paths a key that may invoke the function opens too: its example inputs and its live numbers
(what the console's page of a function shows a key that may call it)."""


def operator_scope(path: str) -> str | None:
    """The scope a path of the operators' (no function's) needs: "admin" for the admin API, "metrics"
    for /metrics (a Prometheus key needs no more; an admin key opens it too), "" (any valid key, checked
    further by the route's function) for /api/me and a function's example and stats; None for any other
    path."""
    if path == ME_PATH or _INVOKERS_VIEW.match(path):
        return ""
    if is_admin(path):
        return "admin"
    return "metrics" if path == METRICS_PATH else None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyService, functions: FunctionService) -> None:
        self.app = app
        self.keys = keys
        self.functions = functions

    def _guarded_function(self, scope: Scope) -> str | None:
        """The function whose key this request needs (None: no function's; "" any valid key)."""
        invocation = invocations.of(scope)
        revision = invocation.revision if invocation is not None else None
        if revision is None and scope["path"].startswith(OPENAI_PREFIX):
            return ""
        if scope["path"] == "/v1/models":  # the list: open, but a key sent is checked and widens it
            return "" if _token(scope) is not None else None
        if revision is None:  # no inference route, or a name no function has (`GET /v1/models/f:predict`)
            match = _UNDER_FUNCTION.match(scope["path"])
            revision = self.functions.get(match.group(1)) if match else None
        if revision is None or revision.function.spec.auth.public:
            return None  # unknown → the route answers 404; public → open
        return revision.name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needs = operator_scope(scope["path"])
        function = None if needs is not None else self._guarded_function(scope)
        if needs is None and function is None:
            await self.app(scope, receive, send)
            return
        token = _token(scope)
        try:
            if token is None:
                raise AuthError(401, "an API key is required: send 'Authorization: Bearer fns_…' or 'X-API-Key'")
            with tracing.span("auth"):
                principal = await self.keys.verify(token)
            if needs and not principal.may(needs):
                raise AuthError(403, f"API key {principal.key_id} has no '{needs}' scope", principal.key_id)
            viewed = _INVOKERS_VIEW.match(scope["path"]) if needs == "" else None
            if viewed and not (principal.is_admin or principal.may_invoke(viewed.group(1))):
                raise AuthError(403, f"API key {principal.key_id} may not invoke {viewed.group(1)!r} "
                                     f"(scopes: {', '.join(principal.scopes)})", principal.key_id)
            if function and not principal.may_invoke(function):
                raise AuthError(403, f"API key {principal.key_id} may not invoke {function!r} "
                                     f"(scopes: {', '.join(principal.scopes)})", principal.key_id)
        except StoreUnavailable as exc:  # a key this router has not seen yet, and no database to look it up
            log.warning("cannot check an API key: %s", exc)  # the details are the operator's, not the caller's
            generic = StoreUnavailable("the API key cannot be checked now: the state database is unavailable")
            await (await store_unavailable(Request(scope), generic))(scope, receive, send)
            return
        except AuthError as exc:
            response = error_response(Request(scope), exc.status, str(exc),
                                      fields={"keyId": exc.key_id} if exc.key_id else None)
            if exc.status == 401:
                challenge = 'Bearer realm="fnserve"' + ('' if token is None else ', error="invalid_token"')
                response.headers["WWW-Authenticate"] = challenge
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        invocation = invocations.of(scope)
        if invocation is not None:
            invocation.principal = principal
        await self.app(scope, receive, send)
