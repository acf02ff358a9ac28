"""The control plane shared by the router's routes: deploy, roll back, remove and restore functions;
submit training jobs and roll a function forward when one succeeds.

Deploying checks everything that can be checked before anything changes (manifest, source folder,
model — pinned to a concrete run and verified —, handler module), then asks the backend to start the
revision, and only once it is ready records it and routes traffic to it. Any failure before that point
changes nothing. A job with ``deployOnSuccess`` changes only the model: the function's current revision
(or, if it was never deployed, the function.yaml beside the job's manifest) with ``model.uri`` pinned
to the new run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnserve.backends.base import BackendError, DeployFailed, FunctionNotFound, Serving, Training
from fnserve.manifest import (
    Function,
    ManifestError,
    Problem,
    TrainingJob,
    parse_function,
    parse_training_job,
    read_yaml,
)
from fnserve.records import JobRecord, Revision
from fnserve.router.auth import KeyVerifier
from fnserve.router.metrics import Metrics, backend_statuses
from fnserve.router.proxy import Proxy
from fnserve.router.quota import DailyCounters, Limits, MemoryStore, Store
from fnserve.router.usage import UsageLedger
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import ArtifactError, ModelSource, NoCompleteRun, pin_model, resolve_model, snapshot_dir

log = logging.getLogger("fnserve.router")

TENANT_CACHE_SECONDS = 5.0


class DeployRejected(Exception):
    """A deploy request that is wrong as given; nothing was changed."""

    def __init__(self, message: str, problems: list[Problem] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.problems = problems or []
        self.reason = reason
        """A stable word for clients that act on it (``NoCompleteRun``: train first), else empty."""


@dataclass
class Platform:
    settings: Settings
    state: StateStore
    backend: Serving
    training: Training
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
    _followers: set[asyncio.Task[None]] = field(default_factory=set)

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
        folder = _source_folder(source_dir)
        self._check_handler(function, folder, source)
        model = await self._model(function, folder, source)
        if model.uri != function.spec.model.uri:  # the revision records the run "latest" stood for
            data = function.to_dict()
            data["spec"]["model"]["uri"] = model.uri
            function = parse_function(data, source)
        code_dir, model_dir = await asyncio.to_thread(self._snapshot, folder, model)

        async with self._lock(function.name):
            number = await asyncio.to_thread(self.state.next_number, function.name)
            revision = Revision(function, number, code_dir, model_dir, time.time())
            created = function.name not in self.functions
            await self._switch(revision, created)
        return revision, created

    async def _switch(self, revision: Revision, created: bool) -> None:
        """Start ``revision``, and once it serves make it current (callers hold the function's lock)."""
        try:
            await self.backend.apply(revision)
        except DeployFailed:
            if created:  # a first deploy that failed leaves nothing behind
                try:
                    await self.backend.delete(revision.name)
                except FunctionNotFound:
                    pass
            raise
        await asyncio.to_thread(self.state.publish, revision)
        self.functions[revision.name] = revision

    async def rollback(self, name: str, to: int | None) -> Revision:
        """Serve an earlier revision again (default: the newest one before the current)."""
        async with self._lock(name):
            current = self.functions.get(name)
            if current is None:
                raise FunctionNotFound(f"function {name!r} not found")
            numbers = [r.number for r in await asyncio.to_thread(self.state.revisions, name)]
            if to is None:
                earlier = [n for n in numbers if n < current.number]
                if not earlier:
                    raise DeployRejected(f"{name}: revision {current.number} is the oldest; nothing to roll back to")
                to = earlier[-1]
            if to == current.number:
                raise DeployRejected(f"{name}: revision {to} is already serving")
            revision = await asyncio.to_thread(self.state.revision, name, to)
            if revision is None:
                raise DeployRejected(f"{name}: no revision {to} (revisions: {', '.join(map(str, numbers))})")
            await self._switch(revision, created=False)
        log.info("%s: rolled back to revision %d", name, to)
        return revision

    async def _model(self, function: Function, folder: Path, source: str) -> ModelSource:
        """Pin and check the model; fetch and verify it here only for backends that load it from this
        machine (in a cluster, KServe's storage initializer downloads it into each pod)."""
        settings = self.settings
        uri, root, options = function.spec.model.uri, settings.artifacts_uri(), settings.s3_options()
        try:
            if not self.backend.fetches_models:
                pinned = await asyncio.to_thread(pin_model, uri, folder, root, options)
                return ModelSource(pinned, Path(""), True)
            return await asyncio.to_thread(resolve_model, uri, folder, settings.state_dir / "models", root, options)
        except ArtifactError as exc:
            problem = Problem("spec.model.uri", str(exc))
            raise DeployRejected(problem.render(source), [problem], type(exc).__name__ if
                                 isinstance(exc, NoCompleteRun) else "") from None

    def _snapshot(self, folder: Path, model: ModelSource) -> tuple[Path, Path]:
        """Freeze the function's code and model for this revision (downloads and runs already are)."""
        root = self.settings.state_dir
        if root / "sources" in folder.parents:  # a revision's own snapshot (a job rolling it forward)
            code = folder
        else:
            code = snapshot_dir(folder.resolve(), root / "sources",
                                exclude=model.local_dir if model.local_dir != Path("") else None)
        return code, model.local_dir if model.frozen else snapshot_dir(model.local_dir, root / "models")

    # -- training jobs -------------------------------------------------------------------------------
    async def submit_job(self, manifest: Any, source_dir: str, source: str,
                         params: dict[str, Any] | None = None) -> JobRecord:
        """Validate and queue a training job; with deployOnSuccess, roll the function forward after it."""
        try:
            job = parse_training_job(manifest, source)
        except ManifestError as exc:
            raise DeployRejected(f"invalid manifest: {exc}", exc.problems) from None
        folder = _source_folder(source_dir)
        if job.spec.deploy_on_success and job.spec.function not in self.functions:
            await asyncio.to_thread(self._function_beside, job, folder, source)
        record = await self.training.submit_job(job, folder, {**job.spec.params, **(params or {})})
        if job.spec.deploy_on_success:
            record.deploy = "pending"
            await asyncio.to_thread(self.state.save_job, record)
            task = asyncio.ensure_future(self._deploy_when_done(record.id, job, folder, source))
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)
        return record

    @staticmethod
    def _function_beside(job: TrainingJob, folder: Path, source: str) -> tuple[Any, Path]:
        """The manifest data of the function.yaml beside the job's manifest, when it defines the function."""
        path = folder / "function.yaml"
        problem = Problem("spec.deployOnSuccess", f"function {job.spec.function!r} is not deployed and "
                                                  f"{path} does not define it; deploy it first")
        try:
            data = read_yaml(path)
            function = parse_function(data, str(path))
        except ManifestError:
            raise DeployRejected(problem.render(source), [problem]) from None
        if function.name != job.spec.function:
            raise DeployRejected(problem.render(source), [problem])
        return data, folder

    async def _deploy_when_done(self, job_id: str, job: TrainingJob, folder: Path, source: str) -> None:
        record = await self.training.wait_job(job_id)
        if record.state != "succeeded" or not record.artifact_uri:
            record.deploy = ""  # nothing was published, so there is nothing to roll forward to
            await asyncio.to_thread(self.state.save_job, record)
            return
        name = job.spec.function
        try:
            current = self.functions.get(name)
            if current is not None:
                data, source_dir = current.function.to_dict(), current.source_dir
            else:
                data, source_dir = await asyncio.to_thread(self._function_beside, job, folder, source)
            data["spec"]["model"]["uri"] = record.artifact_uri
            revision, _ = await self.deploy(data, str(source_dir), f"{name} (job {job_id})")
            outcome = f"revision {revision.number}"
            log.info("%s: job %s deployed as revision %d", name, job_id, revision.number)
        except (DeployRejected, BackendError) as exc:
            outcome = f"not deployed: {exc}"
            log.error("%s: job %s succeeded but its run was %s", name, job_id, outcome)
        record.deploy = outcome
        await asyncio.to_thread(self.state.save_job, record)

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

    async def close(self) -> None:
        for task in self._followers:
            task.cancel()

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


def _source_folder(source_dir: Any) -> Path:
    folder = Path(source_dir) if isinstance(source_dir, str) and source_dir else None
    if folder is None or not folder.is_absolute() or not folder.is_dir():
        raise DeployRejected(f"sourceDir must be the absolute path of the function's folder "
                             f"on the router's machine (got {source_dir!r})")
    return folder
