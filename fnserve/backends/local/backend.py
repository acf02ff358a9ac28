"""LocalBackend: functions as replica processes on this machine.

v0 keeps one replica per function (the autoscaler and activator replace that policy later). A deploy
starts the new revision's replica, waits for it to be ready, then switches traffic and drains the old
one, so a redeploy never drops a request and a failed deploy leaves the old revision serving. A replica
that crashes is restarted with exponential backoff, as Kubernetes would restart its pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from fnserve.backends.base import (
    DeployFailed,
    Endpoint,
    FunctionNotFound,
    FunctionStatus,
    NoReadyReplica,
    ReplicaStatus,
)
from fnserve.backends.local.replica import Replica, ReplicaFailed, tail_lines
from fnserve.settings import Settings
from fnserve.state import Revision

log = logging.getLogger("fnserve.local")

_MAX_RESTART_DELAY = 30.0


@dataclass
class _Function:
    revision: Revision
    replicas: list[Replica] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    starting: int = 0
    restarting: bool = False
    message: str = ""
    restarts: int = 0

    def serving(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "ready"]

    def notify(self) -> None:
        """Wake requests waiting for a replica: one became ready, or a start ended in failure."""
        self.changed.set()
        self.changed = asyncio.Event()


class LocalBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._functions: dict[str, _Function] = {}
        self._replicas: dict[str, Replica] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- deploy / delete ---------------------------------------------------------------------
    async def apply(self, revision: Revision) -> None:
        fn = self._functions.get(revision.name)
        if fn is None:
            fn = self._functions[revision.name] = _Function(revision)
        async with fn.lock:
            replica = await self._start(revision)  # raises DeployFailed; nothing has changed then
            old = fn.replicas
            fn.revision, fn.replicas, fn.message, fn.restarts = revision, [replica], "", 0
            fn.notify()
        for previous in old:
            self._spawn(self._drain(previous))
        log.info("%s: revision %d serving from %s", revision.name, revision.number, replica.id)

    async def _start(self, revision: Revision) -> Replica:
        fn = self._functions[revision.name]
        manifest_path = self._write_manifest(revision)
        replica = Replica(revision, manifest_path, self._log_dir(revision.name))
        self._replicas[replica.id] = replica
        fn.starting += 1
        try:
            await replica.start(self.settings)
            await replica.wait_ready(self.session, self.settings.replica_ready_timeout)
        except (ReplicaFailed, OSError) as exc:
            await replica.stop(self.settings.replica_stop_timeout)
            self._replicas.pop(replica.id, None)
            fn.message = f"{revision.name} revision {revision.number} did not start: {exc}"
            raise DeployFailed(fn.message) from None
        finally:
            fn.starting -= 1
            fn.notify()
        self._spawn(self._watch(replica))
        return replica

    def _write_manifest(self, revision: Revision) -> Path:
        """Replicas read the manifest as deployed, not whatever function.yaml holds by now."""
        path = self.settings.state_dir / "revisions" / revision.name / f"{revision.number}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(revision.function.to_dict(), sort_keys=False))
        return path

    def _log_dir(self, name: str) -> Path:
        return self.settings.state_dir / "logs" / name

    async def delete(self, name: str) -> None:
        fn = self._functions.pop(name, None)
        if fn is None:
            raise FunctionNotFound(f"function {name!r} not found")
        async with fn.lock:
            await asyncio.gather(*(self._stop(r) for r in fn.replicas))
            fn.replicas = []
            fn.notify()

    async def _drain(self, replica: Replica) -> None:
        """Let in-flight requests finish (up to drain_timeout), then stop the replica."""
        replica.state = "draining"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(replica.idle.wait(), self.settings.drain_timeout)
        await self._stop(replica)

    async def _stop(self, replica: Replica) -> None:
        await replica.stop(self.settings.replica_stop_timeout)
        self._replicas.pop(replica.id, None)

    async def _watch(self, replica: Replica) -> None:
        """Restart a serving replica that exits on its own, with exponential backoff."""
        assert replica.process is not None
        code = await replica.process.wait()
        if replica.state != "ready" or self._closing:
            return
        replica.state = "failed"
        self._replicas.pop(replica.id, None)
        fn = self._functions.get(replica.revision.name)
        if fn is None or replica not in fn.replicas:
            return
        fn.replicas.remove(replica)
        fn.message = f"replica {replica.id} exited with code {code}; restarting"
        log.warning("%s: %s", replica.revision.name, fn.message)
        await self._restart(fn, replica.revision)

    async def _restart(self, fn: _Function, revision: Revision) -> None:
        fn.restarting = True
        try:
            await self._restart_until_ready(fn, revision)
        finally:
            fn.restarting = False
            fn.notify()

    async def _restart_until_ready(self, fn: _Function, revision: Revision) -> None:
        while not self._closing and self._functions.get(revision.name) is fn and fn.revision is revision:
            await asyncio.sleep(min(_MAX_RESTART_DELAY, 0.5 * 2 ** fn.restarts))
            fn.restarts += 1
            async with fn.lock:
                if fn.revision is not revision or self._functions.get(revision.name) is not fn:
                    return
                try:
                    replica = await self._start(revision)
                except DeployFailed as exc:
                    fn.message = str(exc)
                    continue
                fn.replicas.append(replica)
                fn.message = ""
                fn.notify()
                return

    # -- the request path ---------------------------------------------------------------------
    async def acquire(self, name: str) -> Endpoint:
        fn = self._functions.get(name)
        if fn is None:
            raise FunctionNotFound(f"function {name!r} not found")
        deadline = time.monotonic() + self.settings.replica_ready_timeout
        while not fn.serving():
            remaining = deadline - time.monotonic()
            if (fn.starting == 0 and not fn.restarting) or remaining <= 0:
                raise NoReadyReplica(f"function {name!r} has no ready replica"
                                     + (f": {fn.message}" if fn.message else ""))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fn.changed.wait(), remaining)
        replica = min(fn.serving(), key=lambda r: r.outstanding)
        replica.begin()
        return Endpoint(name, replica.id, replica.url)

    def release(self, endpoint: Endpoint) -> None:
        replica = self._replicas.get(endpoint.replica)
        if replica is not None:
            replica.end()

    # -- inspection ------------------------------------------------------------------------------
    def status(self, name: str) -> FunctionStatus:
        fn = self._functions.get(name)
        if fn is None:
            raise FunctionNotFound(f"function {name!r} not found")
        replicas = [ReplicaStatus(r.id, r.revision.number, r.state, r.url, r.pid, r.outstanding, r.started_at)
                    for r in self._replicas.values() if r.revision.name == name]
        return FunctionStatus(name, fn.revision.number, bool(fn.serving()), replicas, fn.message)

    def names(self) -> list[str]:
        return sorted(self._functions)

    async def logs(self, name: str, tail: int) -> str:
        if name not in self._functions:
            raise FunctionNotFound(f"function {name!r} not found")
        return await asyncio.to_thread(self._read_logs, name, tail)

    def _read_logs(self, name: str, tail: int) -> str:
        """The newest replica logs of a function, newest last, ``tail`` lines from each."""
        files = sorted(self._log_dir(name).glob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]
        return "\n".join(f"==> {path.stem} <==\n" + "\n".join(tail_lines(path, tail)) for path in files)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(r.stop(self.settings.replica_stop_timeout) for r in list(self._replicas.values())),
                             return_exceptions=True)
        self._replicas.clear()
        self._functions.clear()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
