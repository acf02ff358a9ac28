"""create_app(): the router as a Starlette application, and the lifespan that owns its resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from fnserve.backends.base import BackendError, Serving, Training
from fnserve.router import admin, inference, metrics, openapi
from fnserve.router.admission import AdmissionMiddleware
from fnserve.router.auth import AuthMiddleware, KeyVerifier, load_pepper
from fnserve.router.body import BodyGuardMiddleware
from fnserve.router.errors import RequestIdMiddleware, error_response
from fnserve.router.platform import DeployRejected, Platform
from fnserve.router.proxy import Proxy
from fnserve.settings import Settings
from fnserve.state import StateStore

log = logging.getLogger("fnserve.router")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    what = {404: "no such route", 405: "method not allowed"}.get(exc.status_code)
    message = f"{what}: {request.method} {request.url.path}" if what else str(exc.detail)
    return error_response(request, exc.status_code, message, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal error in the router; see its log")


@dataclass(frozen=True)
class StartupDeploy:
    """A manifest to deploy once the router is up (``fnserve up --deploy PATH``)."""

    manifest: Any
    source_dir: str
    source: str


async def _startup(platform: Platform, restoring: asyncio.Future[None], deploys: list[StartupDeploy]) -> None:
    await restoring
    for item in deploys:
        try:
            revision, _ = await platform.deploy(item.manifest, item.source_dir, item.source)
        except (DeployRejected, BackendError) as exc:
            log.error("could not deploy %s: %s", item.source, exc)
            continue
        log.info("deployed %s revision %d at /v1/models/%s:predict", revision.name, revision.number, revision.name)


async def _flush_forever(platform: Platform) -> None:
    """Daily counters and usage reach SQLite every second: a crash loses at most a second of counts."""
    while True:
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(platform.flush)
        except Exception:
            log.exception("could not persist usage and daily counters; will retry")


def create_app(settings: Settings, serving: Serving, training: Training, state: StateStore | None = None,
               deploys: list[StartupDeploy] | None = None) -> Starlette:
    state = state or StateStore(settings.state_dir / "fnserve.db")
    keys = KeyVerifier(state, load_pepper(settings.state_dir))
    platform = Platform(settings, state, serving, training, Proxy(settings.connect_timeout), keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await platform.proxy.start()
        await serving.start()
        await training.start()
        restoring = platform.restore()
        await asyncio.sleep(0)  # the scheduled applies register their functions before any request
        starting = asyncio.ensure_future(_startup(platform, restoring, deploys or []))
        flushing = asyncio.ensure_future(_flush_forever(platform))
        try:
            yield
        finally:
            starting.cancel()
            flushing.cancel()
            await platform.close()
            platform.flush()
            await platform.quota_store.close()
            await training.close()
            await serving.close()
            await platform.proxy.close()
            state.close()

    app = Starlette(
        routes=[*inference.routes, *admin.routes, *metrics.routes, *openapi.routes],
        middleware=[Middleware(RequestIdMiddleware),
                    Middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes,
                               idle_timeout=settings.body_timeout),
                    Middleware(AuthMiddleware, platform=platform),
                    Middleware(AdmissionMiddleware, platform=platform)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.platform = platform
    return app
