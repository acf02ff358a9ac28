"""The inference routes (KServe V1 and Open Inference V2): resolve → acquire → forward → release.

The router holds no protocol logic of its own: the replica (a KServe ModelServer) parses bodies and
produces protocol errors, and the router passes them through, so the answer is exactly what KServe
would give, plus routing, request ids and (later) keys and quotas.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fnserve.backends.base import BackendError
from fnserve.records import Revision
from fnserve.router.errors import error_response
from fnserve.router.platform import Platform
from fnserve.router.proxy import UpstreamUnreachable


async def _forward(request: Request, *, json_default: bool = False) -> Response:
    platform: Platform = request.app.state.platform
    name = request.path_params["name"]
    revision = platform.functions.get(name)
    if revision is None:
        return error_response(request, 404, f"function {name!r} not found")
    path = None
    version = request.path_params.get("version")
    if version is not None:  # a function's versions are its revisions; only the serving one answers
        if version != str(revision.number):
            return error_response(request, 404, f"function {name!r} has no version {version!r} serving "
                                                f"(version {revision.number} is current)")
        path = request.scope["path"].replace(f"/versions/{version}", "", 1)
    started = time.perf_counter()
    response, cold_start_ms = await _attempt(request, platform, revision, json_default, path)
    platform.metrics.observe(name, response.status_code, time.perf_counter() - started, cold_start_ms)
    return response


async def _attempt(request: Request, platform: Platform, revision: Revision,
                   json_default: bool, path: str | None) -> tuple[Response, float | None]:
    name = revision.name
    for attempt in (1, 2):  # a connection refused before any byte was sent is retried once elsewhere
        try:
            endpoint = await platform.backend.acquire(name)
        except BackendError as exc:
            return error_response(request, exc.status, str(exc), retry_after=exc.retry_after), None
        try:
            response = await platform.proxy.forward(request, endpoint, revision.function.spec.timeout,
                                                    json_default=json_default, path=path)
        except UpstreamUnreachable as exc:
            platform.backend.unreachable(endpoint)
            if attempt == 2:
                return error_response(request, 503, str(exc), retry_after=1), None
            continue
        finally:
            platform.backend.release(endpoint)
        if endpoint.cold_start_ms is not None:
            response.headers["X-Fnserve-Cold-Start"] = f"{endpoint.cold_start_ms:.0f}"
        return response, endpoint.cold_start_ms
    raise AssertionError("unreachable")


async def model_request(request: Request) -> Response:
    """Model metadata and readiness, answered by the function's own predictor."""
    return await _forward(request)


async def predict(request: Request) -> Response:
    """Run an inference request on the function's predictor."""
    return await _forward(request, json_default=True)


async def live(request: Request) -> Response:
    """The router process is up."""
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    """The router is up and has restored its deployed functions."""
    platform: Platform = request.app.state.platform
    if not platform.restored:
        return error_response(request, 503, "restoring deployed functions", retry_after=1)
    return JSONResponse({"ready": True})


routes = [
    Route("/v1/models/{name}", model_request, methods=["GET"], name="v1_model"),
    Route("/v1/models/{name}:predict", predict, methods=["POST"], name="v1_predict"),
    Route("/v2/health/live", live, methods=["GET"], name="v2_live"),
    Route("/v2/health/ready", ready, methods=["GET"], name="v2_ready"),
    Route("/v2/models/{name}", model_request, methods=["GET"], name="v2_model"),
    Route("/v2/models/{name}/ready", model_request, methods=["GET"], name="v2_model_ready"),
    Route("/v2/models/{name}/infer", predict, methods=["POST"], name="v2_infer"),
    Route("/v2/models/{name}/versions/{version}", model_request, methods=["GET"], name="v2_model_version"),
    Route("/v2/models/{name}/versions/{version}/ready", model_request, methods=["GET"], name="v2_model_version_ready"),
    Route("/v2/models/{name}/versions/{version}/infer", predict, methods=["POST"], name="v2_infer_version"),
]
