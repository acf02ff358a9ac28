"""create_app(): the router as a Starlette application — its services built once and handed to the
routes and middlewares that use them — and the lifespan that owns their resources.

The middlewares, outermost first, are the request path (docs/architecture.md draws it):
request context (id, trace, access log) → body guard → resolve (an inference request becomes an Invocation) → auth → admission
(limits; the invocation's cost recorded once when it ends) → dispatch (an invocation goes to its
handler; anything else to the route table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fnserve.backends.base import BackendError, Serving, Training
from fnserve.database import StoreUnavailable
from fnserve.router import console, metrics, openapi
from fnserve.router.access import RequestContextMiddleware
from fnserve.router.admin.audit import AuditRoutes
from fnserve.router.admin.functions import FunctionRoutes
from fnserve.router.admin.jobs import JobRoutes
from fnserve.router.admin.keys import KeyRoutes
from fnserve.router.admin.me import MeRoutes
from fnserve.router.admin.usage import UsageRoutes
from fnserve.router.admission import AdmissionMiddleware
from fnserve.router.auth import AuthMiddleware
from fnserve.router.body import BodyGuardMiddleware
from fnserve.router.errors import error_response, exception_handlers
from fnserve.router.generative import invoke_path
from fnserve.router.inference import DispatchMiddleware, Inference, ResolveMiddleware
from fnserve.router.proxy import Proxy
from fnserve.router.quota import DailyCounters, Limits, MemoryStore, Store
from fnserve.router.services.accounting import AccountingService
from fnserve.router.services.admission import AdmissionService
from fnserve.router.services.audit import AuditLog
from fnserve.router.services.catalog import Catalog
from fnserve.router.services.functions import DeployRejected, FunctionService
from fnserve.router.services.keys import KeyService, resolve_pepper
from fnserve.router.services.sync import ChangeWatcher
from fnserve.router.services.training import TrainingService
from fnserve.settings import Settings
from fnserve.state import StateStore

log = logging.getLogger("fnserve.router")


def _allowed(request: Request) -> str:
    """Every method some route takes at this path (Starlette's 405 names only the first route's)."""
    path = request.scope["path"]
    methods = {m for route in request.app.routes if isinstance(route, Route) and route.path_regex.match(path)
               for m in route.methods or ()}
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    what = {404: "no such route", 405: "method not allowed"}.get(exc.status_code)
    message = f"{what}: {request.method} {request.url.path}" if what else str(exc.detail)
    headers = {**(exc.headers or {}), "Allow": _allowed(request)} if exc.status_code == 405 else exc.headers
    return error_response(request, exc.status_code, message, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal error in the router; see its log")


@dataclass(frozen=True)
class StartupDeploy:
    """A manifest to deploy once the router is up (``fnserve up --deploy PATH``)."""

    manifest: Any
    source_dir: str
    source: str


@dataclass(frozen=True)
class Services:
    """Everything the router decides with, built once per app (tests reach them as ``app.state.services``)."""

    functions: FunctionService
    training: TrainingService
    keys: KeyService
    admission: AdmissionService
    accounting: AccountingService
    audit: AuditLog
    watcher: ChangeWatcher

    def flush(self) -> None:
        """Persist daily counters and usage (blocking: a worker thread, or at shutdown)."""
        self.admission.flush()
        self.accounting.flush()


def build_services(settings: Settings, state: StateStore, serving: Serving, training: Training) -> Services:
    audit = AuditLog(state)
    functions = FunctionService(settings, state, serving, audit)
    keys = KeyService(state, resolve_pepper(settings), audit)
    store: Store = MemoryStore()
    daily = DailyCounters(state)
    metrics_ = metrics.Metrics(functions.statuses)
    accounting = AccountingService(state, metrics_)
    if settings.redis_url:  # several routers: limits, daily quotas and usage counted in one place
        import redis

        from fnserve.router.redis_counters import RedisDailyCounters, RedisUsage
        from fnserve.router.redis_quota import RedisStore

        redis_store = RedisStore(settings.redis_url, failed_open=metrics_.failed_open)
        blocking = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=1)
        store = redis_store
        daily = RedisDailyCounters(state, redis_store.client, blocking, failed_open=metrics_.failed_open)
        accounting.shared = RedisUsage(state, redis_store.client, blocking, accounting.ledger.record)
    defaults = Limits(settings.default_rps, settings.default_burst, settings.default_concurrency,
                      settings.default_daily, settings.default_tpm, settings.default_tpd)
    return Services(functions=functions, training=TrainingService(state, training, functions, audit), keys=keys,
                    admission=AdmissionService(keys, store, daily, defaults), accounting=accounting, audit=audit,
                    watcher=ChangeWatcher(state, functions, keys, settings.sync_interval))


async def _startup(functions: FunctionService, restoring: asyncio.Future[None],
                   deploys: list[StartupDeploy]) -> None:
    await restoring
    for item in deploys:
        try:
            revision, _ = await functions.deploy(item.manifest, item.source_dir, item.source)
        except (DeployRejected, BackendError) as exc:
            log.error("could not deploy %s: %s", item.source, exc)
            continue
        log.info("deployed %s revision %d at %s", revision.name, revision.number, invoke_path(revision))


async def _watch_after(restoring: asyncio.Future[None], watcher: ChangeWatcher) -> None:
    await restoring
    await watcher.run()


async def _flush_forever(services: Services) -> None:
    """Daily counters and usage reach the store every second: a crash loses at most a second of counts
    (nothing with Redis, where they are counted as they happen)."""
    warned_at = -math.inf
    while True:
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(services.flush)
        except StoreUnavailable as exc:  # kept in memory until the database is back
            if time.monotonic() - warned_at > 10:
                warned_at = time.monotonic()
                log.warning("cannot persist usage and daily counters yet (kept until it can): %s", exc)
        except Exception:
            log.exception("could not persist usage and daily counters; will retry")


def create_app(settings: Settings, serving: Serving, training: Training, *, state: StateStore | None = None,
               deploys: list[StartupDeploy] | None = None) -> Starlette:
    state = state or StateStore(settings.state_location())
    services = build_services(settings, state, serving, training)
    proxy = Proxy(settings.connect_timeout)
    inference = Inference(services.functions, serving, proxy)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await serving.start()
        await training.start()
        restoring = services.functions.restore()
        await asyncio.sleep(0)  # the scheduled applies register their functions before any request
        starting = asyncio.ensure_future(_startup(services.functions, restoring, deploys or []))
        flushing = asyncio.ensure_future(_flush_forever(services))
        # other routers on the same database: their deploys, keys and tenants reach this one
        watching = asyncio.ensure_future(_watch_after(restoring, services.watcher)) if state.shared else None
        try:
            yield
        finally:
            starting.cancel()
            flushing.cancel()
            if watching is not None:
                watching.cancel()
            await services.training.close()
            try:
                services.flush()
            except StoreUnavailable as exc:
                log.error("usage and daily counts since the database went away are lost: %s", exc)
            await services.admission.close()
            await training.close()  # before serving: a cluster's serving side closes the client both share
            await serving.close()
            proxy.close()
            state.close()

    catalog = Catalog(state)
    function_routes = FunctionRoutes(services.functions, services.accounting, catalog, settings)
    routes = [*inference.routes,
              *UsageRoutes(services.accounting).routes(),
              *AuditRoutes(services.audit).routes(),
              *KeyRoutes(services.keys).routes(),
              *function_routes.routes(),
              *MeRoutes(services.keys, services.admission, services.functions, services.accounting,
                        function_routes.brief).routes(),
              *JobRoutes(services.training, catalog, settings).routes(),
              *metrics.routes(services.accounting.metrics),
              *openapi.routes(lambda: sorted(services.functions.table)),
              *console.routes()]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware),
                    Middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes,
                               idle_timeout=settings.body_timeout),
                    Middleware(ResolveMiddleware, inference=inference),
                    Middleware(AuthMiddleware, keys=services.keys, functions=services.functions),
                    Middleware(AdmissionMiddleware, admission=services.admission, accounting=services.accounting),
                    Middleware(DispatchMiddleware, inference=inference)],
        exception_handlers={**exception_handlers(), HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.services = services
    return app
