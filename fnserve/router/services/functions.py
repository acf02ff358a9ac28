"""The function table and its changes: deploy, roll back, remove, restore.

Deploying checks everything that can be checked before anything changes (manifest, source folder,
model — pinned to a concrete run and verified —, handler module), then asks the serving backend to
start the revision, and only once it is ready records it and routes traffic to it. Any failure before
that point changes nothing. The table (name → serving revision) is in memory: the request path reads it
on every call without touching the store.

A canary (``deploy --canary N``) is a second revision beside the current one that takes N% of the
requests: the split is a counter per function, not a coin, so over any 100 requests exactly N go to the
canary (several routers: each exact, so the sum too). ``promote`` makes it the current revision,
``rollback`` drops it. Where the backend splits traffic itself (KServe's canaryTrafficPercent in a
cluster) every request goes to the function and the backend divides them.

Several routers on one database learn of each other's changes through :meth:`sync` (services/sync.py
calls it when the functions' version moves): a router whose backend runs its own replicas applies the
change to them; one whose backend is shared (a cluster) only updates its table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fnserve.backends.base import BackendError, DeployFailed, FunctionNotFound, FunctionStatus, Serving
from fnserve.manifest import Function, ManifestError, Problem, parse_function
from fnserve.records import Revision, Rollout
from fnserve.router.services.audit import SYSTEM, Actor, AuditLog
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import ArtifactError, ModelSource, NoCompleteRun, pin_model, resolve_model, snapshot_dir

log = logging.getLogger("fnserve.router")

Progress = Callable[[str, dict[str, Any]], None]
"""Told a deploy's phase as it begins, with what is known of it then (FunctionService.deploy)."""


def _unheard(phase: str, detail: dict[str, Any]) -> None:
    """The progress of a deploy nobody follows."""


class DeployRejected(Exception):
    """A deploy (or job) request that is wrong as given; nothing was changed."""

    status = 400

    def __init__(self, message: str, problems: list[Problem] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.problems = problems or []
        self.reason = reason
        """A stable word for clients that act on it (``NoCompleteRun``: train first), else empty."""


class FunctionService:
    def __init__(self, settings: Settings, state: StateStore, serving: Serving, audit: AuditLog) -> None:
        self.settings = settings
        self.state = state
        self.serving = serving
        self.audit = audit
        self.table: dict[str, Revision] = {}
        """Each deployed function's serving revision."""
        self.canaries: dict[str, tuple[Revision, int]] = {}
        """A function's canary revision and its percent of the requests, during a canary rollout."""
        self._counts: dict[str, int] = {}
        self.restored = False
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, name: str) -> Revision | None:
        return self.table.get(name)

    def pick(self, name: str) -> tuple[Revision | None, bool]:
        """The revision one request of ``name`` goes to, and whether it is the canary: exactly N of every
        100 requests go to an N% canary (the k-th does when ⌊k·N/100⌋ moves)."""
        canary = self.canaries.get(name)
        if canary is None or self.serving.splits_traffic:
            return self.table.get(name), False
        count = self._counts[name] = self._counts.get(name, 0) + 1
        revision, percent = canary
        if (count * percent) // 100 != ((count - 1) * percent) // 100:
            return revision, True
        return self.table.get(name), False

    def pinned(self, name: str, version: str) -> tuple[Revision | None, bool]:
        """The revision a request naming ``version`` goes to: the canary when it names the canary's number
        (where this router splits), else the current one (which then checks the number); no split counted."""
        canary = self.canaries.get(name)
        if canary is not None and not self.serving.splits_traffic and version == str(canary[0].number):
            return canary[0], True
        return self.table.get(name), False

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

    def follow_logs(self, name: str, tail: int) -> AsyncIterator[bytes]:
        return self.serving.follow_logs(self.current(name).name, tail)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def deploy(self, manifest: Any, source_dir: str, source: str = "manifest", *, canary: int = 0,
                     actor: Actor = SYSTEM, progress: Progress | None = None) -> tuple[Revision, bool]:
        """Validate and roll out a new revision — as the function's current one, or with ``canary`` N as its
        canary taking N% of the requests; returns it and whether the function is new. ``progress`` is told
        each phase as it begins: validating, pinning (the model as given), starting (the revision, its pinned
        model); the deploy ends ready when this returns."""
        metadata = manifest.get("metadata") if isinstance(manifest, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        async with self.audit.action(actor, "function.deploy", str(name or source)[:253], source=source,
                                     canary=canary) as detail:
            revision, created = await self._deploy(manifest, source_dir, source, canary, progress or _unheard)
            detail.update(revision=revision.number, modelUri=revision.function.spec.model.uri)
        return revision, created

    async def _deploy(self, manifest: Any, source_dir: str, source: str, canary: int,
                      progress: Progress) -> tuple[Revision, bool]:
        progress("validating", {})
        try:
            function = parse_function(manifest, source)
        except ManifestError as exc:
            raise DeployRejected(f"invalid manifest: {exc}", exc.problems) from None
        if canary and function.name not in self.table:
            raise DeployRejected(f"{function.name}: a canary runs beside the current revision, and there is none; "
                                 f"deploy it without --canary first")
        folder = source_folder(source_dir)
        self._check_handler(function, folder, source)
        progress("pinning", {"model": function.spec.model.uri})
        model = await self._model(function, folder, source)
        if model.uri != function.spec.model.uri:  # the revision records the run "latest" stood for
            data = function.to_dict()
            data["spec"]["model"]["uri"] = model.uri
            function = parse_function(data, source)
        code_dir, model_dir = await asyncio.to_thread(self._snapshot, folder, model)

        async with self._lock(function.name):
            revision = await asyncio.to_thread(self._reserve, function, code_dir, model_dir)
            created = function.name not in self.table
            progress("starting", {"revision": revision.number, "model": model.uri,
                                  **({"canary": canary} if canary else {})})
            try:
                if canary:
                    await self.serving.apply(revision, canary=canary)
                    await asyncio.to_thread(self.state.publish_canary, revision, canary)
                    self.canaries[revision.name] = (revision, canary)
                else:
                    await self._switch(revision, created)
            except BaseException:  # a revision that never served is not one: its number is free again
                await asyncio.shield(asyncio.to_thread(self.state.forget_revision, revision.name, revision.number))
                raise
        return revision, created

    def _reserve(self, function: Function, code_dir: Path, model_dir: Path) -> Revision:
        """The next revision number, taken in the database: another router deploying the same function at
        the same moment gets the one after (blocking: a worker thread)."""
        while True:
            number = self.state.next_number(function.name)
            revision = Revision(function, number, code_dir, model_dir, time.time())
            if self.state.reserve_revision(revision):
                return revision

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
        self.canaries.pop(revision.name, None)

    async def promote(self, name: str, actor: Actor = SYSTEM) -> Revision:
        """The canary becomes the current revision and takes every request."""
        async with self.audit.action(actor, "function.promote", name) as detail, self._lock(name):
            self.current(name)
            canary = self.canaries.get(name)
            if canary is None:
                raise DeployRejected(f"{name}: no canary to promote (deploy one with --canary N)")
            revision = canary[0]
            await self.serving.promote(name)  # requests already routed to the canary find it as the function
            await asyncio.to_thread(self.state.end_canary, name, True)
            self.table[name] = revision
            self.canaries.pop(name, None)
            detail["revision"] = revision.number
        log.info("%s: promoted revision %d", name, revision.number)
        return revision

    async def rollback(self, name: str, to: int | None, actor: Actor = SYSTEM) -> tuple[Revision, Revision | None]:
        """Drop the canary, if there is one (and ``to`` is not given); else serve an earlier revision again
        (default: the newest one before the current). Returns the revision serving and the canary dropped."""
        async with self.audit.action(actor, "function.rollback", name, to=to) as detail, self._lock(name):
            current = self.current(name)
            if name in self.canaries and to is None:
                dropped = self.canaries[name][0]
                await self.serving.drop_canary(name)
                await asyncio.to_thread(self.state.end_canary, name, False)
                self.canaries.pop(name, None)
                detail.update(droppedCanary=dropped.number, revision=current.number)
                log.info("%s: dropped canary revision %d", name, dropped.number)
                return current, dropped
            numbers = [r.number for r in await asyncio.to_thread(self.state.revisions, name)]
            if to is None:
                earlier = [n for n in numbers if n < current.number]
                if not earlier:
                    raise DeployRejected(f"{name}: revision {current.number} is the oldest; nothing to roll back to")
                to = earlier[-1]
            if to == current.number and name not in self.canaries:
                raise DeployRejected(f"{name}: revision {to} is already serving")
            revision = await asyncio.to_thread(self.state.revision, name, to)
            if revision is None:
                raise DeployRejected(f"{name}: no revision {to} (revisions: {', '.join(map(str, numbers))})")
            await self._switch(revision, created=False)
            detail["revision"] = to
        log.info("%s: rolled back to revision %d", name, to)
        return revision, None

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

    async def remove(self, name: str, actor: Actor = SYSTEM) -> None:
        async with self.audit.action(actor, "function.delete", name), self._lock(name):
            if name not in self.table:
                raise FunctionNotFound(f"function {name!r} not found")
            await asyncio.to_thread(self.state.delete, name)
            try:
                await self.serving.delete(name)
            except FunctionNotFound:
                pass
            self.table.pop(name)
            self.canaries.pop(name, None)

    def restore(self) -> asyncio.Future[None]:
        """Bring back every function deployed before the last shutdown, concurrently.

        Called at startup, before the first request: the function table is filled at once and every
        apply is scheduled, so a request that arrives while a replica starts waits for it instead of
        getting a 404. The returned future completes when every restore has been tried.
        """
        rollouts = self.state.rollouts()
        for rollout in rollouts:
            self._remember(rollout)

        async def all_of() -> None:
            await asyncio.gather(*(self._restore(r) for r in rollouts))
            self.restored = True

        return asyncio.ensure_future(all_of())

    async def _restore(self, rollout: Rollout) -> None:
        if not self.serving.shared:
            await self._apply_here(rollout, None)
            return
        # one InferenceService for every router: it is applied as it stands now, canary and all, in one step
        self.serving.follow(rollout.name, rollout)
        try:
            if rollout.canary is not None:
                await self.serving.apply(rollout.canary, verify=False, canary=rollout.percent)
            else:
                await self.serving.apply(rollout.current, verify=False)
        except BackendError as exc:
            log.error("could not restore %s: %s", rollout.name, exc)

    def _remember(self, rollout: Rollout) -> None:
        self.table[rollout.name] = rollout.current
        if rollout.canary is not None:
            self.canaries[rollout.name] = (rollout.canary, rollout.percent)
        else:
            self.canaries.pop(rollout.name, None)

    async def _apply_here(self, rollout: Rollout, before: Rollout | None) -> None:
        """Make this router's backend serve ``rollout``, which it served as ``before`` (None: nothing).
        No proof of start: the router that deployed it had it."""
        name = rollout.name
        try:
            if before is not None and before.canary is not None and before.canary.number == rollout.current.number:
                await self.serving.promote(name)  # promoted elsewhere: the canary's replicas carry on
            elif before is None or before.current.number != rollout.current.number:
                await self.serving.apply(rollout.current, verify=False)
            if rollout.canary is not None and (before is None or before.canary is None
                                               or before.canary.number != rollout.canary.number):
                await self.serving.apply(rollout.canary, verify=False, canary=rollout.percent)
            elif rollout.canary is None and before is not None and before.canary is not None \
                    and before.canary.number != rollout.current.number:
                await self.serving.drop_canary(name)
        except BackendError as exc:
            log.error("could not bring %s here: %s", name, exc)

    async def sync(self) -> bool:
        """Take in what other routers changed in the function table (services/sync.py calls this). A
        function this router is changing itself is left for the next call (its lock is held: waiting
        would hold up the watcher, and the row read before would be stale); False when any was."""
        names = {r.name for r in await asyncio.to_thread(self.state.rollouts)} | set(self.table)
        complete = True
        for name in sorted(names):
            lock = self._lock(name)
            if lock.locked():
                complete = False
                continue
            async with lock:
                await self._sync_one(name)
        return complete

    async def _sync_one(self, name: str) -> None:
        """(The caller holds the function's lock.)"""
        known = self.table.get(name)
        before = Rollout(known, *self.canaries.get(name, (None, 0))) if known is not None else None
        after = await asyncio.to_thread(self.state.rollout, name)  # read under the lock: never stale
        if _same(before, after):
            return
        if after is None:
            if self.serving.shared:
                self.serving.follow(name, None)
            else:
                with contextlib.suppress(FunctionNotFound):
                    await self.serving.delete(name)
            self.table.pop(name, None)
            self.canaries.pop(name, None)
            log.info("%s: removed by another router", name)
            return
        if self.serving.shared:
            self.serving.follow(name, after)
        else:
            await self._apply_here(after, before)
        self._remember(after)
        log.info("%s: now revision %d%s (changed by another router)", name, after.current.number,
                 f", canary {after.canary.number} at {after.percent}%" if after.canary else "")


def _same(a: Rollout | None, b: Rollout | None) -> bool:
    """The same revisions serving (a function removed and deployed again starts at number 1 once more: the
    creation times tell them apart)."""
    def shape(r: Rollout | None) -> tuple[int, float, int, float, int] | None:
        if r is None:
            return None
        canary = (r.canary.number, r.canary.created_at) if r.canary else (0, 0.0)
        return r.current.number, r.current.created_at, *canary, r.percent

    return shape(a) == shape(b)


def source_folder(source_dir: Any) -> Path:
    folder = Path(source_dir) if isinstance(source_dir, str) and source_dir else None
    if folder is None or not folder.is_absolute() or not folder.is_dir():
        raise DeployRejected(f"sourceDir must be the absolute path of the function's folder "
                             f"on the router's machine (got {source_dir!r})")
    return folder
