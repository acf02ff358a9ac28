"""The control plane shared by the router's routes: deploy, remove and restore functions.

Deploying checks everything that can be checked before anything changes (manifest, source folder,
model folder, handler module), then asks the backend to start the revision, and only once it is
ready records it and routes traffic to it. Any failure before that point changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnserve.backends.base import Backend, BackendError, DeployFailed, FunctionNotFound
from fnserve.manifest import Function, ManifestError, Problem, parse_function
from fnserve.router.auth import KeyVerifier
from fnserve.router.metrics import Metrics, backend_statuses
from fnserve.router.proxy import Proxy
from fnserve.router.quota import DailyCounters, Limits, MemoryStore, Store
from fnserve.router.usage import UsageLedger
from fnserve.settings import Settings
from fnserve.state import Revision, StateStore
from fnserve.storage import ArtifactError, resolve_model_dir, snapshot_dir

log = logging.getLogger("fnserve.router")

TENANT_CACHE_SECONDS = 5.0


class DeployRejected(Exception):
    """A deploy request that is wrong as given; nothing was changed."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass
class Platform:
    settings: Settings
    state: StateStore
    backend: Backend
    proxy: Proxy
    keys: KeyVerifier
    functions: dict[str, Revision] = field(default_factory=dict)
    restored: bool = False
    metrics: Metrics = field(init=False)
    quota_store: Store = field(default_factory=MemoryStore)
    daily: DailyCounters = field(init=False)
    usage: UsageLedger = field(init=False)
    default_limits: Limits = field(init=False)
    _tenants: tuple[float, dict[str, Limits]] = (0.0, {})
    tenant_generation: int = 0
    """Bumped whenever the tenants' limits are re-read, so limits resolved from older ones are redone."""
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = Metrics(backend_statuses(self))
        if self.settings.redis_url:
            from fnserve.router.redis_quota import RedisStore

            self.quota_store = RedisStore(self.settings.redis_url)
        self.daily = DailyCounters(self.state)
        self.usage = UsageLedger(self.state)
        s = self.settings
        self.default_limits = Limits(s.default_rps, s.default_burst, s.default_concurrency, s.default_daily)

    async def tenant_limits(self) -> dict[str, Limits]:
        """Tenants' default limits, re-read at most every few seconds (other routers may change them)."""
        fetched, limits = self._tenants
        if time.monotonic() - fetched > TENANT_CACHE_SECONDS:
            stored = await asyncio.to_thread(self.state.tenant_limits)
            limits = {tenant: Limits(**values) for tenant, values in stored.items()}
            self._tenants = (time.monotonic(), limits)
            self.tenant_generation += 1
        return limits

    def forget_tenants(self) -> None:
        self._tenants = (0.0, {})

    def flush(self) -> None:
        """Persist daily counters and usage (blocking: a worker thread, or at shutdown)."""
        self.daily.flush()
        self.usage.flush()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def deploy(self, manifest: Any, source_dir: str, source: str = "manifest") -> tuple[Revision, bool]:
        """Validate and roll out a new revision; returns it and whether the function is new."""
        try:
            function = parse_function(manifest, source)
        except ManifestError as exc:
            raise DeployRejected(f"invalid manifest: {exc}", exc.problems) from None
        folder = Path(source_dir) if isinstance(source_dir, str) and source_dir else None
        if folder is None or not folder.is_absolute() or not folder.is_dir():
            raise DeployRejected(f"sourceDir must be the absolute path of the function's folder "
                                 f"on the router's machine (got {source_dir!r})")
        self._check_handler(function, folder, source)
        model_dir = await self._model_dir(function, folder, source)
        code_dir, model_dir = await asyncio.to_thread(self._snapshot, folder, model_dir)

        async with self._lock(function.name):
            number = await asyncio.to_thread(self.state.next_number, function.name)
            revision = Revision(function, number, code_dir, model_dir, time.time())
            created = function.name not in self.functions
            try:
                await self.backend.apply(revision)
            except DeployFailed:
                if created:  # a first deploy that failed leaves nothing behind
                    try:
                        await self.backend.delete(function.name)
                    except FunctionNotFound:
                        pass
                raise
            await asyncio.to_thread(self.state.publish, revision)
            self.functions[function.name] = revision
        return revision, created

    async def _model_dir(self, function: Function, folder: Path, source: str) -> Path:
        try:
            return await asyncio.to_thread(resolve_model_dir, function.spec.model.uri, folder,
                                           self.settings.state_dir / "models", self.settings.s3_endpoint_url)
        except ArtifactError as exc:
            problem = Problem("spec.model.uri", str(exc))
            raise DeployRejected(problem.render(source), [problem]) from None

    def _snapshot(self, folder: Path, model_dir: Path) -> tuple[Path, Path]:
        """Freeze the function's code and model for this revision (s3 downloads already are)."""
        root = self.settings.state_dir
        code = snapshot_dir(folder.resolve(), root / "sources", exclude=model_dir)
        if root / "models" in model_dir.parents:
            return code, model_dir
        return code, snapshot_dir(model_dir, root / "models")

    @staticmethod
    def _check_handler(function: Function, folder: Path, source: str) -> None:
        if function.spec.handler is None:
            return
        module = function.spec.handler.split(":")[0].replace(".", "/")
        if not ((folder / f"{module}.py").is_file() or (folder / module / "__init__.py").is_file()):
            problem = Problem("spec.handler", f"no module {module}.py in {folder}")
            raise DeployRejected(problem.render(source), [problem])

    async def remove(self, name: str) -> None:
        async with self._lock(name):
            if name not in self.functions:
                raise FunctionNotFound(f"function {name!r} not found")
            self.functions.pop(name)
            await asyncio.to_thread(self.state.delete, name)
            try:
                await self.backend.delete(name)
            except FunctionNotFound:
                pass

    def restore(self) -> asyncio.Future[None]:
        """Bring back every function deployed before the last shutdown, concurrently.

        Called at startup, before the first request: the function table is filled at once and every
        apply is scheduled, so a request that arrives while a replica starts waits for it instead of
        getting a 404. The returned future completes when every restore has been tried.
        """
        revisions = self.state.current_all()
        for revision in revisions:
            self.functions[revision.name] = revision

        async def one(revision: Revision) -> None:
            try:
                await self.backend.apply(revision, verify=False)
            except BackendError as exc:
                log.error("could not restore %s: %s", revision.name, exc)

        async def all_of() -> None:
            await asyncio.gather(*(one(r) for r in revisions))
            self.restored = True

        return asyncio.ensure_future(all_of())
