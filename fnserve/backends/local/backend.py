"""LocalBackend: the Serving protocol on this machine — replica processes, scaled like Knative scales pods.

Per function: an Activator (queue + least-outstanding dispatch) and a ConcurrencyRecorder feed the pure
KPA decider every ``autoscale_tick`` seconds, and at once when a request finds no replica (Knative's
"poke"); reconcile() then starts or drains replicas to match the decision. A deploy proves the new
revision starts (one replica must become ready) before it takes traffic and the old revision drains;
with ``initialScale`` 0 that proving replica is stopped right away. A replica that exits on its own
leaves the rotation at once and the next reconcile replaces it; failed starts back off exponentially.
Training jobs are LocalJobs' (jobs.py); the two share only the GPU inventory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
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
from fnserve.backends.local.activator import Activator
from fnserve.backends.local.autoscaler import ConcurrencyRecorder, Params, State, decide
from fnserve.backends.local.gpus import GpuInventory
from fnserve.backends.local.processes import ForkServerClient, ProcessHandle, forking_supported, spawn
from fnserve.backends.local.replica import Launch, Replica, ReplicaFailed, tail_lines
from fnserve.records import Revision
from fnserve.replica_contract import MODULE
from fnserve.settings import Settings
from fnserve.tasks import BackgroundTasks

log = logging.getLogger("fnserve.local")

_MAX_BACKOFF = 30.0
_LIVE = ("starting", "ready")


@dataclass
class _Function:
    revision: Revision
    manifest_path: Path
    params: Params
    activator: Activator
    since: float
    scaler: State = field(default_factory=State)
    desired: int = 0
    panic: bool = False
    message: str = ""
    failures: int = 0
    next_start_at: float = 0.0
    start_times_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10))

    @property
    def name(self) -> str:
        return self.revision.name

    def live(self) -> list[Replica]:
        return [r for r in self.activator.replicas if r.state in _LIVE]


class LocalBackend:
    fetches_models = True
    shared = False

    def __init__(self, settings: Settings, gpus: GpuInventory) -> None:
        self.settings = settings
        self._functions: dict[str, _Function] = {}
        self._replicas: dict[str, tuple[_Function, Replica]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = BackgroundTasks()
        self._ticker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._forkservers: dict[str, ForkServerClient] = {}
        self.gpus = gpus
        gpus.on_freed(self._gpus_freed)
        usable, why = forking_supported()
        self._fork = settings.forkserver and usable
        log.info("replicas start by %s", "fork from a warm fork server" if self._fork else
                 f"plain spawn ({'FNSERVE_FORKSERVER is off' if usable else why})")

    def _launcher(self, runtime: str) -> Launch:
        """Fork from the runtime's fork server; a plain spawn where forking is off or fails."""
        async def plain(args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> ProcessHandle:
            return await spawn([self.settings.python, "-m", MODULE, *args], env, cwd, log_path)

        if not self._fork:
            return plain
        server = self._forkservers.get(runtime)
        if server is None:
            root = self.settings.state_dir
            server = self._forkservers[runtime] = ForkServerClient(
                runtime, root / "run" / f"forkserver-{runtime}-{os.getpid()}.sock",  # one per router sharing a state dir
                root / "logs" / f"forkserver-{runtime}.log",
                self.settings.python)

        async def fork(args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> ProcessHandle:
            try:
                return await server.fork(args, env, cwd, log_path)
            except OSError as exc:
                log.warning("fork server for %s failed (%s); spawning this replica instead", runtime, exc)
                return await plain(args, env, cwd, log_path)

        return fork

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- deploy / delete ---------------------------------------------------------------------
    def _new_function(self, revision: Revision) -> _Function:
        params = Params.from_scaling(revision.function.spec.scaling)
        now = time.monotonic()
        recorder = ConcurrencyRecorder(now, params.stable_window)
        activator = Activator(revision.name, params.container_concurrency, self.settings.activator_queue_limit,
                              self.settings.activator_timeout, recorder)
        return _Function(revision, self._write_manifest(revision), params, activator, since=now)

    async def start(self) -> None:
        """Nothing to start before the first deploy: fork servers and the ticker start on demand."""

    async def apply(self, revision: Revision, *, verify: bool = True) -> None:
        """Serve ``revision``. With ``verify`` (a deploy) one replica must start first; without (a
        restore after restart) the function is registered and scaled like any other."""
        self._ensure_ticker()
        wanted = revision.function.spec.resources.gpu
        if wanted > len(self.gpus.ids):
            raise DeployFailed(f"{revision.name}: spec.resources.gpu asks for {wanted} GPU(s); this machine "
                               f"hands out {len(self.gpus.ids)} ({', '.join(self.gpus.ids) or 'none'})")
        async with self._locks.setdefault(revision.name, asyncio.Lock()):
            fn = self._new_function(revision)
            if verify:
                proof = self._new_replica(fn)
                if proof is None:  # the GPUs are held, possibly by the revision being replaced
                    log.warning("%s: no free GPU to prove revision %d before switching; it starts as GPUs "
                                "are given back", revision.name, revision.number)
                else:
                    await self._start_replica(fn, proof, deploying=True)
            old = self._functions.get(revision.name)
            self._functions[revision.name] = fn
            if old is not None:
                fn.activator.adopt(old.activator)
                for replica in old.activator.replicas:
                    self._tasks.spawn(self._drain(old, replica))
            scaling = revision.function.spec.scaling
            initial = scaling.initial_scale if scaling.initial_scale is not None else scaling.min_replicas
            if initial == 0 and verify and fn.activator.idle():
                # the proof is done: a scale-to-zero function holds no process once deploy returns
                await asyncio.gather(*(self._drain(fn, r) for r in fn.live()))
            fn.desired = max(initial, len(fn.live()) if initial else 0)
            self._start_missing(fn, fn.desired)
        log.info("%s: revision %d serving (%d replica(s) to start with)", revision.name, revision.number, fn.desired)

    def _write_manifest(self, revision: Revision) -> Path:
        """Replicas read the manifest as deployed, not whatever function.yaml holds by now. Written each
        time a revision is taken on: after `fnserve rm`, numbers start again and a new revision 1 must
        not inherit the old one's file."""
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
        fn.activator.fail_waiting(f"function {name!r} was deleted")
        await asyncio.gather(*(self._drain(fn, r) for r in list(fn.activator.replicas)))

    # -- replicas ------------------------------------------------------------------------------
    def _new_replica(self, fn: _Function) -> Replica | None:
        """Register a replica before it starts, so concurrent decisions count it as on its way; None
        when the GPUs it needs are all held (it is then started once some are given back)."""
        revision = fn.revision
        replica = Replica(revision, fn.manifest_path, self._log_dir(revision.name))
        wanted = revision.function.spec.resources.gpu
        if wanted:
            gpus = self.gpus.take(wanted, replica.id)
            if gpus is None:
                fn.message = f"waiting for {wanted} free GPU(s)"
                return None
            replica.gpus = gpus
        fn.activator.replicas.append(replica)
        self._replicas[replica.id] = (fn, replica)
        return replica

    async def _start_replica(self, fn: _Function, replica: Replica, *, deploying: bool = False) -> Replica:
        revision = fn.revision
        started = time.monotonic()
        try:
            await replica.start(self.settings, self._launcher(revision.function.spec.runtime))
            await replica.wait_ready(self.session, self.settings.replica_ready_timeout)
        except (ReplicaFailed, OSError) as exc:
            await replica.stop(self.settings.replica_stop_timeout)
            self._forget(fn, replica)
            fn.failures += 1
            fn.next_start_at = time.monotonic() + min(_MAX_BACKOFF, 0.5 * 2 ** (fn.failures - 1))
            fn.message = f"{revision.name} revision {revision.number} did not start: {exc}"
            if not deploying and not fn.live():
                fn.activator.fail_waiting(fn.message)
            raise DeployFailed(fn.message) from None
        fn.failures, fn.message = 0, ""
        fn.start_times_ms.append((time.monotonic() - started) * 1000)
        self._tasks.spawn(self._watch(fn, replica))
        fn.activator.dispatch()
        return replica

    async def _start_in_background(self, fn: _Function, replica: Replica) -> None:
        with contextlib.suppress(DeployFailed):
            await self._start_replica(fn, replica)

    def _start_missing(self, fn: _Function, desired: int) -> None:
        missing = desired - len(fn.live())
        if missing > 0 and time.monotonic() >= fn.next_start_at and not self._closing:
            for _ in range(missing):
                replica = self._new_replica(fn)
                if replica is None:
                    break
                self._tasks.spawn(self._start_in_background(fn, replica))

    def _forget(self, fn: _Function, replica: Replica) -> None:
        if replica in fn.activator.replicas:
            fn.activator.replicas.remove(replica)
        if replica.outstanding == 0:
            self._replicas.pop(replica.id, None)
        if replica.gpus:
            replica.gpus = []
            self.gpus.give_back(replica.id)  # waiting replicas, then queued jobs, are told

    def _gpus_freed(self) -> None:
        """Replicas waiting for GPUs start as soon as a replica or a job gives some back."""
        for other in list(self._functions.values()):
            if other.revision.function.spec.resources.gpu and len(other.live()) < other.desired:
                self._start_missing(other, other.desired)

    async def _drain(self, fn: _Function, replica: Replica) -> None:
        """Take a replica out of rotation, let in-flight requests finish (up to drain_timeout), stop it."""
        if replica.state == "ready":
            replica.state = "draining"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(replica.idle.wait(), self.settings.drain_timeout)
        await replica.stop(self.settings.replica_stop_timeout)
        self._forget(fn, replica)

    async def _watch(self, fn: _Function, replica: Replica) -> None:
        """A replica that exits on its own leaves the rotation at once; reconcile replaces it."""
        assert replica.process is not None
        code = await replica.process.wait()
        if not self._closing:
            self._fail(fn, replica, f"exited with code {code}")  # no-op for a replica we stopped ourselves

    def _fail(self, fn: _Function, replica: Replica, why: str) -> None:
        """Out of rotation now, killed, replaced by the next reconcile (once: a stopped or failed replica
        is left alone)."""
        if replica.state in ("stopped", "failed"):
            return
        replica.kill()
        self._forget(fn, replica)
        fn.message = f"replica {replica.id} {why}"
        log.warning("%s: %s; replacing it", fn.name, fn.message)
        if self._functions.get(fn.name) is fn and not self._closing:
            self.reconcile(fn)

    def unreachable(self, endpoint: Endpoint) -> None:
        found = self._replicas.get(endpoint.replica)
        if found is not None:
            self._fail(found[0], found[1], "failed a connection")

    async def _probe(self, fn: _Function, replica: Replica) -> None:
        replica.probing = True
        try:
            alive = await replica.answers(self.session, self.settings.liveness_timeout)
        finally:
            replica.probing = False
        if alive:
            replica.probe_failures = 0
            return
        replica.probe_failures += 1
        if replica.probe_failures >= self.settings.liveness_failures and replica.state == "ready":
            self._fail(fn, replica, f"stopped answering ({replica.probe_failures} health checks failed)")

    # -- scaling ---------------------------------------------------------------------------------
    def reconcile(self, fn: _Function, *, poke: bool = False) -> None:
        """One autoscaler decision for ``fn``, then start or drain replicas to match it."""
        now = time.monotonic()
        decision = decide(fn.activator.recorder.samples(now), fn.activator.ready_count(), fn.params, now,
                          fn.scaler, fn.since)
        fn.scaler, fn.panic = decision.state, decision.panic
        desired = max(decision.desired, 1) if poke else decision.desired
        fn.desired = desired
        live = fn.live()
        if len(live) < desired:
            self._start_missing(fn, desired)
        elif len(live) > desired:
            # stop idle ready replicas first, newest first; a starting one only if nothing else is left
            victims = sorted(live, key=lambda r: (r.state != "ready", r.outstanding, -r.started_at))
            for replica in victims[:len(live) - desired]:
                self._tasks.spawn(self._drain(fn, replica))

    def _ensure_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick_forever())

    async def _tick_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.autoscale_tick)
            for fn in list(self._functions.values()):
                try:
                    self.reconcile(fn)
                except Exception:  # one function's bug must not stop scaling for the others
                    log.exception("%s: autoscaler tick failed", fn.name)
                for replica in fn.activator.replicas:
                    if replica.state == "ready" and not replica.probing:
                        self._tasks.spawn(self._probe(fn, replica))

    # -- the request path ---------------------------------------------------------------------
    async def acquire(self, name: str) -> Endpoint:
        fn = self._functions.get(name)
        if fn is None:
            raise FunctionNotFound(f"function {name!r} not found")
        if not fn.live():
            if time.monotonic() < fn.next_start_at and fn.message:
                raise NoReadyReplica(f"function {name!r} has no ready replica: {fn.message}")
            self.reconcile(fn, poke=True)
        replica, cold_ms = await fn.activator.acquire()
        return Endpoint(name, replica.id, replica.url, cold_ms)

    def release(self, endpoint: Endpoint) -> None:
        found = self._replicas.get(endpoint.replica)
        if found is None:
            return
        fn, replica = found
        fn.activator.release(replica)
        if replica.state in ("stopped", "failed") and replica.outstanding == 0:
            self._replicas.pop(replica.id, None)

    # -- inspection ------------------------------------------------------------------------------
    def status(self, name: str) -> FunctionStatus:
        fn = self._functions.get(name)
        if fn is None:
            raise FunctionNotFound(f"function {name!r} not found")
        replicas = [ReplicaStatus(r.id, r.revision.number, r.state, r.url, r.pid, r.outstanding, r.started_at, r.gpus)
                    for _, r in self._replicas.values() if r.revision.name == name and r.state != "stopped"]
        ready = fn.activator.ready_count() > 0 or (fn.desired == 0 and not fn.message)
        return FunctionStatus(name, fn.revision.number, ready,
                              replicas, fn.message, desired=fn.desired, panic=fn.panic,
                              queued=fn.activator.queued, start_times_ms=[round(t) for t in fn.start_times_ms])

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
        if self._ticker is not None:
            self._ticker.cancel()
        self._tasks.cancel()
        replicas = [r for _, r in self._replicas.values()]
        await asyncio.gather(*(r.stop(self.settings.replica_stop_timeout) for r in replicas), return_exceptions=True)
        await asyncio.gather(*(f.close() for f in self._forkservers.values()), return_exceptions=True)
        self._replicas.clear()
        self._functions.clear()
        if self._session is not None:
            await self._session.close()
