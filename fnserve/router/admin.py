"""The admin API (/api/functions): deploy, list, inspect, delete, logs.

Until API keys exist, these routes answer only clients on the loopback interface (a router started
with --host 0.0.0.0 still serves inference to the network, but not control). Set
FNSERVE_ADMIN_LOOPBACK_ONLY=false to lift that, knowingly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fnserve.backends.base import BackendError, FunctionNotFound
from fnserve.router.errors import error_response
from fnserve.router.platform import DeployRejected, Platform
from fnserve.state import Revision

Endpoint = Callable[[Request], Awaitable[Response]]
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _admin(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        platform: Platform = request.app.state.platform
        client = request.client.host if request.client else ""
        if platform.settings.admin_loopback_only and client not in _LOOPBACK and not client.startswith("127."):
            return error_response(request, 403, "the admin API answers loopback clients only")
        try:
            return await endpoint(request)
        except BackendError as exc:
            return error_response(request, exc.status, str(exc), retry_after=exc.retry_after)

    guarded.__doc__ = endpoint.__doc__
    guarded.__name__ = endpoint.__name__
    return guarded


def _summary(platform: Platform, revision: Revision) -> dict[str, Any]:
    try:
        status = platform.backend.status(revision.name).to_dict()
    except FunctionNotFound:
        status = {"ready": False, "replicas": [], "message": "not running"}
    spec = revision.function.spec
    return {"name": revision.name, "revision": revision.number, "runtime": spec.runtime,
            "url": f"/v1/models/{revision.name}:predict", "createdAt": revision.created_at,
            **{k: v for k, v in status.items() if k not in ("name", "revision")}}


@_admin
async def list_functions(request: Request) -> Response:
    """All deployed functions with their current revision and replicas."""
    platform: Platform = request.app.state.platform
    return JSONResponse({"functions": [_summary(platform, r) for _, r in sorted(platform.functions.items())]})


@_admin
async def deploy(request: Request) -> Response:
    """Deploy a manifest as a new revision; answers once the revision serves (201 new, 200 updated)."""
    platform: Platform = request.app.state.platform
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error_response(request, 400, f"request body must be JSON: {exc}")
    if not isinstance(body, dict) or "manifest" not in body:
        return error_response(request, 400, 'request body must be {"manifest": {...}, "sourceDir": "..."}')
    try:
        revision, created = await platform.deploy(body["manifest"], body.get("sourceDir", ""),
                                                  str(body.get("source") or "manifest"))
    except DeployRejected as exc:
        problems = [{"path": p.path, "message": p.message} for p in exc.problems]
        return error_response(request, 400, str(exc), problems=problems)
    return JSONResponse({**revision.to_dict(), **_summary(platform, revision)}, 201 if created else 200)


def _revision(request: Request) -> Revision:
    platform: Platform = request.app.state.platform
    name = request.path_params["name"]
    revision = platform.functions.get(name)
    if revision is None:
        raise FunctionNotFound(f"function {name!r} not found")
    return revision


@_admin
async def get_function(request: Request) -> Response:
    """One function: its current revision, manifest and replicas."""
    revision = _revision(request)
    return JSONResponse({**revision.to_dict(), **_summary(request.app.state.platform, revision)})


@_admin
async def delete_function(request: Request) -> Response:
    """Stop a function's replicas and forget it."""
    platform: Platform = request.app.state.platform
    await platform.remove(request.path_params["name"])
    return JSONResponse({"deleted": request.path_params["name"]})


@_admin
async def function_logs(request: Request) -> Response:
    """The end of the function's replica logs (?tail=N lines per replica, default 100)."""
    revision = _revision(request)
    try:
        tail = max(1, min(int(request.query_params.get("tail", "100")), 10_000))
    except ValueError:
        return error_response(request, 400, "tail must be a whole number of lines")
    text = await request.app.state.platform.backend.logs(revision.name, tail)
    return PlainTextResponse(text + "\n")


routes = [
    Route("/api/functions", list_functions, methods=["GET"], name="list_functions"),
    Route("/api/functions", deploy, methods=["POST"], name="deploy_function"),
    Route("/api/functions/{name}", get_function, methods=["GET"], name="get_function"),
    Route("/api/functions/{name}", delete_function, methods=["DELETE"], name="delete_function"),
    Route("/api/functions/{name}/logs", function_logs, methods=["GET"], name="function_logs"),
]
