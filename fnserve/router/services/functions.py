"""The function table and its changes: deploy, roll back, remove, restore.

Deploying checks everything that can be checked before anything changes (manifest, source folder,
model — pinned to a concrete run and verified —, handler module), then asks the serving backend to
start the revision, and only once it is ready records it and routes traffic to it. Any failure before
that point changes nothing. The table (name → serving revision) is in memory: the request path reads it
on every call without touching the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fnserve.backends.base import BackendError, DeployFailed, FunctionNotFound, FunctionStatus, Serving
from fnserve.manifest import Function, ManifestError, Problem, parse_function
from fnserve.records import Revision
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import ArtifactError, ModelSource, NoCompleteRun, pin_model, resolve_model, snapshot_dir

log = logging.getLogger("fnserve.router")


class DeployRejected(Exception):
    """A deploy (or job) request that is wrong as given; nothing was changed."""

    def __init__(self, message: str, problems: list[Problem] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.problems = problems or []
        self.reason = reason
        """A stable word for clients that act on it (``NoCompleteRun``: train first), else empty."""


class FunctionService:
    def __init__(self, settings: Settings, state: StateStore, serving: Serving) -> None:
        self.settings = settings
        self.state = state
        self.serving = serving
        self.table: dict[str, Revision] = {}
        """Each deployed function's serving revision."""
        self.restored = False
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, name: str) -> Revision | None:
        return self.table.get(name)

    def current(self, name: str) -> Revision:
        """The serving revision of ``name``; raises FunctionNotFound."""
        revision = self.table.get(name)
        if revision is None:
            raise FunctionNotFound(f"function {name!r} not found")
        return revision

    def status(self, name: str) -> FunctionStatus | None:
        """What the serving backend says of a function (None: it runs nothing for it)."""
        try:
            return self.serving.status(name)
        except FunctionNotFound:
            return None

    def statuses(self) -> list[FunctionStatus]:
        return [status for name in list(self.table) if (status := self.status(name)) is not None]

    async def revisions(self, name: str) -> list[Revision]:
        return await asyncio.to_thread(self.state.revisions, name)

    async def logs(self, name: str, tail: int) -> str:
        return await self.serving.logs(self.current(name).name, tail)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def deploy(self, manifest: Any, source_dir: str, source: str = "manifest") -> tuple[Revision, bool]:
        """Validate and roll out a new revision; returns it and whether the function is new."""
        try:
            function = parse_function(manifest, source)
        except ManifestError as exc:
            raise DeployRejected(f"invalid manifest: {exc}", exc.problems) from None
        folder = source_folder(source_dir)
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
            created = function.name not in self.table
            await self._switch(revision, created)
        return revision, created

    async def _switch(self, revision: Revision, created: bool) -> None:
        """Start ``revision``, and once it serves make it current (callers hold the function's lock)."""
        try:
            await self.serving.apply(revision)
        except DeployFailed:
            if created:  # a first deploy that failed leaves nothing behind
                try:
                    await self.serving.delete(revision.name)
                except FunctionNotFound:
                    pass
            raise
        await asyncio.to_thread(self.state.publish, revision)
        self.table[revision.name] = revision

    async def rollback(self, name: str, to: int | None) -> Revision:
        """Serve an earlier revision again (default: the newest one before the current)."""
        async with self._lock(name):
            current = self.table.get(name)
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
            if not self.serving.fetches_models:
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
            if name not in self.table:
                raise FunctionNotFound(f"function {name!r} not found")
            self.table.pop(name)
            await asyncio.to_thread(self.state.delete, name)
            try:
                await self.serving.delete(name)
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
            self.table[revision.name] = revision

        async def one(revision: Revision) -> None:
            try:
                await self.serving.apply(revision, verify=False)
            except BackendError as exc:
                log.error("could not restore %s: %s", revision.name, exc)

        async def all_of() -> None:
            await asyncio.gather(*(one(r) for r in revisions))
            self.restored = True

        return asyncio.ensure_future(all_of())


def source_folder(source_dir: Any) -> Path:
    folder = Path(source_dir) if isinstance(source_dir, str) and source_dir else None
    if folder is None or not folder.is_absolute() or not folder.is_dir():
        raise DeployRejected(f"sourceDir must be the absolute path of the function's folder "
                             f"on the router's machine (got {source_dir!r})")
    return folder
