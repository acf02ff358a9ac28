"""The admin API: functions (deploy, list, inspect, revisions, rollback, delete, logs), training jobs,
API keys, tenants and usage.

Every route here needs a key with the ``admin`` scope (enforced by router/auth.py before any of this
runs). A new or rotated key's token is in the response once and stored nowhere.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from fnserve.accounting import Tally
from fnserve.backends.base import BackendError, FunctionNotFound
from fnserve.manifest import Problem
from fnserve.records import Revision
from fnserve.router.admin_bodies import (
    BadRequest,
    CreateKey,
    FunctionSource,
    Rollback,
    RotateKey,
    SubmitJob,
    TenantLimits,
    read_body,
    takes,
)
from fnserve.router.auth import create_key, hash_secret, new_secret, token_for
from fnserve.router.errors import error_response
from fnserve.router.platform import DeployRejected, Platform
from fnserve.storage import ArtifactError
from fnserve.storage.models import unpack_upload

Endpoint = Callable[[Request], Awaitable[Response]]


def _admin(endpoint: Endpoint) -> Endpoint:
    """Map backend errors (and refused bodies, with their problems) to their HTTP answers."""
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BadRequest as exc:
            return error_response(request, 400, str(exc), **({"problems": _problems(exc.problems)}
                                                             if exc.problems else {}))
        except BackendError as exc:
            return error_response(request, exc.status, str(exc), retry_after=exc.retry_after)

    guarded.__doc__ = endpoint.__doc__
    guarded.__name__ = endpoint.__name__
    guarded.body_model = getattr(endpoint, "body_model", None)  # type: ignore[attr-defined]
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


async def _source_dir(request: Request, body: FunctionSource) -> str:
    """The folder a manifest's code is in: ``sourceDir`` as given, or ``files`` unpacked here."""
    if body.files is None:
        return body.source_dir or ""
    platform: Platform = request.app.state.platform
    try:
        folder = await asyncio.to_thread(unpack_upload, body.files, platform.settings.state_dir / "uploads")
    except ArtifactError as exc:
        raise BadRequest(str(exc)) from None
    return str(folder)


def _problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"path": p.path, "message": p.message} for p in problems]


def _rejected(request: Request, exc: DeployRejected) -> Response:
    extra = {"reason": exc.reason} if exc.reason else {}
    return error_response(request, 400, str(exc), problems=_problems(exc.problems), **extra)


@_admin
@takes(FunctionSource)
async def deploy(request: Request) -> Response:
    """Deploy a manifest as a new revision; answers once the revision serves (201 new, 200 updated)."""
    platform: Platform = request.app.state.platform
    body = await read_body(request, FunctionSource)
    try:
        revision, created = await platform.deploy(body.manifest, await _source_dir(request, body),
                                                  body.source or "manifest")
    except DeployRejected as exc:
        return _rejected(request, exc)
    return JSONResponse({**revision.to_dict(), **_summary(platform, revision)}, 201 if created else 200)


@_admin
async def list_revisions(request: Request) -> Response:
    """Every revision of a function, oldest first, with the one serving marked."""
    current = _revision(request)
    revisions = await asyncio.to_thread(request.app.state.platform.state.revisions, current.name)
    return JSONResponse({"name": current.name, "current": current.number,
                         "revisions": [{**r.to_dict(), "modelUri": r.function.spec.model.uri,
                                        "current": r.number == current.number} for r in revisions]})


@_admin
@takes(Rollback)
async def rollback(request: Request) -> Response:
    """Serve an earlier revision again: {"to": N} (default: the one before the current)."""
    platform: Platform = request.app.state.platform
    body = await read_body(request, Rollback)
    try:
        revision = await platform.rollback(request.path_params["name"], body.to)
    except DeployRejected as exc:
        return _rejected(request, exc)
    return JSONResponse({**revision.to_dict(), **_summary(platform, revision)})


@_admin
@takes(SubmitJob)
async def submit_job(request: Request) -> Response:
    """Queue a training job: {"manifest": {...TrainingJob}, "sourceDir": "...", "params": {...}} → 202."""
    platform: Platform = request.app.state.platform
    body = await read_body(request, SubmitJob)
    try:
        record = await platform.submit_job(body.manifest, await _source_dir(request, body),
                                           body.source or "manifest", body.params)
    except DeployRejected as exc:
        return _rejected(request, exc)
    return JSONResponse(record.to_dict(), 202, headers={"Location": f"/api/jobs/{record.id}"})


@_admin
async def list_jobs(request: Request) -> Response:
    """The newest training jobs (?limit=N, default 50)."""
    try:
        limit = max(1, min(int(request.query_params.get("limit", "50")), 1000))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    training = request.app.state.platform.training
    return JSONResponse({"jobs": [j.to_dict() for j in await asyncio.to_thread(training.jobs, limit)]})


@_admin
async def get_job(request: Request) -> Response:
    """One job: state, times, exit code, metrics, artifact, and what deployOnSuccess did."""
    training = request.app.state.platform.training
    return JSONResponse((await asyncio.to_thread(training.job_status, request.path_params["job_id"])).to_dict())


@_admin
async def job_logs(request: Request) -> Response:
    """The job's log (?follow=1 streams it until the job ends)."""
    training = request.app.state.platform.training
    job_id = request.path_params["job_id"]
    await asyncio.to_thread(training.job_status, job_id)  # 404 before the stream starts
    follow = request.query_params.get("follow", "") in ("1", "true", "yes")
    return StreamingResponse(training.job_logs(job_id, follow), media_type="text/plain; charset=utf-8")


@_admin
async def cancel_job(request: Request) -> Response:
    """Stop a queued or running job; it publishes nothing. Answers once it has stopped."""
    record = await request.app.state.platform.training.cancel_job(request.path_params["job_id"])
    return JSONResponse(record.to_dict())


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


@_admin
async def list_tenants(request: Request) -> Response:
    """Default limits per tenant."""
    state = request.app.state.platform.state
    return JSONResponse({"tenants": await asyncio.to_thread(state.tenant_limits)})


@_admin
@takes(TenantLimits)
async def set_tenant(request: Request) -> Response:
    """Set a tenant's default limits (replacing the previous ones): {rps?, burst?, concurrency?, daily?}."""
    tenant = request.path_params["tenant"]
    limits = (await read_body(request, TenantLimits)).model_dump(exclude_none=True)
    await asyncio.to_thread(request.app.state.platform.state.set_tenant_limits, tenant, limits)
    request.app.state.platform.forget_tenants()
    return JSONResponse({"tenant": tenant, "limits": limits})


@_admin
async def usage(request: Request) -> Response:
    """The usage ledger per key × function × day (?key=, ?function=, ?since=YYYY-MM-DD)."""
    platform: Platform = request.app.state.platform
    params = request.query_params
    since = params.get("since")
    if since and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", since):
        raise BadRequest(f"since must be a date YYYY-MM-DD (got {since!r})")
    await asyncio.to_thread(platform.usage.flush)
    rows = await asyncio.to_thread(platform.state.usage, params.get("key"), params.get("function"), since)
    return JSONResponse({"usage": [{"keyId": key_id, "function": function, "day": day,
                                    **Tally.from_json(tally).summary()} for key_id, function, day, tally in rows]})


@_admin
async def list_keys(request: Request) -> Response:
    """All API keys (ids and attributes; secrets are never stored)."""
    state = request.app.state.platform.state
    return JSONResponse({"keys": [k.to_dict() for k in await asyncio.to_thread(state.keys)]})


@_admin
@takes(CreateKey)
async def create_api_key(request: Request) -> Response:
    """Create a key: {name, tenant?, scopes?, expiresIn?, limits?}; the token is in this response only."""
    platform: Platform = request.app.state.platform
    body = await read_body(request, CreateKey)
    expires_at = time.time() + body.expires_in if body.expires_in else None
    record, token = await asyncio.to_thread(create_key, platform.state, platform.keys.pepper, body.name,
                                            body.tenant, body.scopes, expires_at,
                                            body.limits.model_dump(exclude_none=True))
    return JSONResponse({"key": record.to_dict(), "token": token}, 201)


@_admin
async def revoke_key(request: Request) -> Response:
    """Revoke a key at once."""
    platform: Platform = request.app.state.platform
    key_id = request.path_params["key_id"]
    if not await asyncio.to_thread(platform.state.revoke_key, key_id, time.time()):
        raise FunctionNotFound(f"no active API key {key_id!r}")
    platform.keys.forget(key_id)
    return JSONResponse({"revoked": key_id})


@_admin
@takes(RotateKey)
async def rotate_key(request: Request) -> Response:
    """New secret for a key; the old one keeps working for {grace} (default 1h)."""
    platform: Platform = request.app.state.platform
    key_id = request.path_params["key_id"]
    grace = (await read_body(request, RotateKey)).grace
    secret = new_secret()
    changed = await asyncio.to_thread(platform.state.rotate_key, key_id, hash_secret(platform.keys.pepper, secret),
                                      time.time() + grace)
    if not changed:
        raise FunctionNotFound(f"no active API key {key_id!r}")
    platform.keys.forget(key_id)
    return JSONResponse({"keyId": key_id, "token": token_for(key_id, secret), "previousValidForSeconds": grace})


routes = [
    Route("/api/usage", usage, methods=["GET"], name="usage"),
    Route("/api/tenants", list_tenants, methods=["GET"], name="list_tenants"),
    Route("/api/tenants/{tenant}", set_tenant, methods=["PUT"], name="set_tenant"),
    Route("/api/keys", list_keys, methods=["GET"], name="list_keys"),
    Route("/api/keys", create_api_key, methods=["POST"], name="create_key"),
    Route("/api/keys/{key_id}", revoke_key, methods=["DELETE"], name="revoke_key"),
    Route("/api/keys/{key_id}/rotate", rotate_key, methods=["POST"], name="rotate_key"),
    Route("/api/functions", list_functions, methods=["GET"], name="list_functions"),
    Route("/api/functions", deploy, methods=["POST"], name="deploy_function"),
    Route("/api/functions/{name}", get_function, methods=["GET"], name="get_function"),
    Route("/api/functions/{name}", delete_function, methods=["DELETE"], name="delete_function"),
    Route("/api/functions/{name}/logs", function_logs, methods=["GET"], name="function_logs"),
    Route("/api/functions/{name}/revisions", list_revisions, methods=["GET"], name="list_revisions"),
    Route("/api/functions/{name}/rollback", rollback, methods=["POST"], name="rollback_function"),
    Route("/api/jobs", list_jobs, methods=["GET"], name="list_jobs"),
    Route("/api/jobs", submit_job, methods=["POST"], name="submit_job"),
    Route("/api/jobs/{job_id}", get_job, methods=["GET"], name="get_job"),
    Route("/api/jobs/{job_id}/logs", job_logs, methods=["GET"], name="job_logs"),
    Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"], name="cancel_job"),
]
