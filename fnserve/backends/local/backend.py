"""LocalBackend: the Serving protocol on this machine — replica processes, scaled like Knative scales pods.

Per track (a function's serving revision, and its canary while one runs; tracks.py): an Activator
(queue + least-outstanding dispatch) and a ConcurrencyRecorder feed the pure KPA decider every
``autoscale_tick`` seconds, and at once when a request finds no replica (Knative's "poke"); reconcile()
then starts or drains replicas to match the decision. A deploy proves the new revision starts (one
replica must become ready) before it takes traffic and the old revision drains; with ``initialScale`` 0
that proving replica is stopped right away. A canary is proved the same way but starts beside the
serving revision, which is left alone; the router picks the track of each request (``splits_traffic``
is False), promote() makes the canary's track — its running replicas — the main one, drop_canary()
drains it. A replica that exits on its own leaves the rotation at once and the next reconcile replaces
it; failed starts back off exponentially. Training jobs are LocalJobs' (jobs.py); the two share only
the GPU inventory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml

from fnserve.backends.base import (
    DeployFailed,
    Endpoint,
    FunctionNotFound,
    FunctionStatus,
    NoCanary,
    NoReadyReplica,
    ReplicaStatus,
    canary_percent,
)
from fnserve.backends.local import replica_logs
from fnserve.backends.local.activator import QueueFull
from fnserve.backends.local.autoscaler import decide
from fnserve.backends.local.gpus import GpuInventory
from fnserve.backends.local.processes import (
    ForkServerClient,
    ForkServerUnavailable,
    Handed,
    ProcessHandle,
    forking_supported,
    spawn,
)
from fnserve.backends.local.replica import Launch, Replica, ReplicaFailed
from fnserve.backends.local.tracks import Function, Track, cold_start_of
from fnserve.records import Revision, Rollout
from fnserve.replica_contract import MODULE
from fnserve.settings import Settings
from fnserve.tasks import BackgroundTasks, detached

log = logging.getLogger("fnserve.local")

_MAX_BACKOFF = 30.0


class LocalBackend:
    fetches_models = True
    shared = False
    splits_traffic = False

    def __init__(self, settings: Settings, gpus: GpuInventory) -> None:
        self.settings = settings
        self._functions: dict[str, Function] = {}
        self._replicas: dict[str, tuple[Track, Replica]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = BackgroundTasks()
        self._ticker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._forkservers: dict[str, ForkServerClient] = {}
        self._restarts: dict[str, dict[str, int]] = {}
        """Replicas replaced per function, by reason (base.RESTART_REASONS): what /metrics exports."""
        self._rejections: dict[str, int] = {}
        """Requests refused per function because its queue was full."""
        self.gpus = gpus
        gpus.on_freed(self._gpus_freed)
        usable, why = forking_supported()
        self._fork = settings.forkserver and usable
        log.info("replicas start by %s", "fork from a warm fork server" if self._fork else
                 f"plain spawn ({'FNSERVE_FORKSERVER is off' if usable else why})")

    def _launcher(self, runtime: str) -> Launch:
        """Fork from the runtime's fork server; a plain spawn where forking is off or fails."""
        async def plain(args: list[str], env: dict[str, str], cwd: Path, log_path: Path, fds: Handed) -> ProcessHandle:
            return await spawn([self.settings.python, "-m", MODULE, *args], env, cwd, log_path, fds)

        if not self._fork:
            return plain
        server = self._forkservers.get(runtime)
        if server is None:
            root = self.settings.state_dir
            server = self._forkservers[runtime] = ForkServerClient(
                runtime, root / "run" / f"forkserver-{runtime}-{os.getpid()}.sock",  # one per router sharing a state dir
                root / "logs" / f"forkserver-{runtime}.log",
                self.settings.python, self.settings.fork_spare_after if self.settings.fork_spare_after >= 0 else None)

        async def fork(args: list[str], env: dict[str, str], cwd: Path, log_path: Path, fds: Handed) -> ProcessHandle:
            try:
                return await server.fork(args, env, cwd, log_path, fds)
            except ForkServerUnavailable as exc:  # nothing handed over: another way is safe
                log.warning("%s; spawning this replica instead", exc)
                return await plain(args, env, cwd, log_path, fds)

        return fork

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- deploy / canary / delete ------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to start before the first deploy: fork servers and the ticker start on demand."""

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _function(self, name: str) -> Function:
        fn = self._functions.get(name)
        if fn is None:
            raise FunctionNotFound(f"function {name!r} not found")
        return fn

    async def apply(self, revision: Revision, *, verify: bool = True, canary: int = 0) -> None:
        """Serve ``revision``, or with ``canary`` run it beside the serving one. With ``verify`` (a deploy)
        one replica must start first; without (a restore after restart) the track is registered and
        scaled like any other."""
        percent = canary_percent(canary)
        self._ensure_ticker()
        wanted = revision.function.spec.resources.gpu
        if wanted > len(self.gpus.ids):
            raise DeployFailed(f"{revision.name}: spec.resources.gpu asks for {wanted} GPU(s); this machine "
                               f"hands out {len(self.gpus.ids)} ({', '.join(self.gpus.ids) or 'none'})")
        async with self._lock(revision.name):
            current = self._functions.get(revision.name)
            if percent and current is None:
                raise FunctionNotFound(f"function {revision.name!r} serves no revision to run a canary beside")
            track = Track.of(revision, self._write_manifest(revision), self.settings.activator_queue_limit,
                             self.settings.activator_timeout)
            if verify:
                proof = self._new_replica(track)
                if proof is None:  # the GPUs are held, possibly by the revision being replaced
                    log.warning("%s: no free GPU to prove revision %d before switching; it starts as GPUs "
                                "are given back", revision.name, revision.number)
                else:
                    await self._start_replica(track, proof, deploying=True)
            if percent and current is not None:
                replaced, current.canary, current.canary_percent = current.canary, track, percent
                if replaced is not None:
                    self._retire(replaced, track)
            else:
                self._functions[revision.name] = Function(track)
                for old in current.tracks() if current is not None else ():
                    self._retire(old, track)
            await self._initial_scale(track, verify)
        log.info("%s: revision %d %s (%d replica(s) to start with)", revision.name, revision.number,
                 f"running as a canary for {percent}% of requests" if percent else "serving", track.desired)

    async def _initial_scale(self, track: Track, verify: bool) -> None:
        """initialScale (else minReplicas) replicas to begin with; at 0 the proving replica goes at once."""
        scaling = track.revision.function.spec.scaling
        initial = scaling.initial_scale if scaling.initial_scale is not None else scaling.min_replicas
        if initial == 0 and verify and track.activator.idle():
            # the proof is done: a scale-to-zero revision holds no process once deploy returns
            await asyncio.gather(*(self._drain(track, r) for r in track.live()))
        track.desired = max(initial, len(track.live()) if initial else 0)
        self._start_missing(track, track.desired)

    def _retire(self, old: Track, successor: Track) -> None:
        """``old`` no longer serves: its waiting requests go to ``successor``, its replicas drain."""
        successor.activator.adopt(old.activator)
        for replica in old.activator.replicas:
            self._tasks.spawn(self._drain(old, replica))

    def _canary(self, name: str, what: str) -> tuple[Function, Track]:
        fn = self._function(name)
        if fn.canary is None:
            raise NoCanary(f"function {name!r} has no canary to {what}")
        return fn, fn.canary

    def follow(self, name: str, rollout: Rollout | None) -> None:
        """Never asked: each router runs replicas of its own, so another router's change is applied here
        (FunctionService.sync), not followed."""
        raise NotImplementedError("the embedded backend is not shared between routers")

    async def promote(self, name: str) -> None:
        """The canary's track, running replicas and all, becomes the main one: no cold start."""
        async with self._lock(name):
            fn, canary = self._canary(name, "promote")
            self._functions[name] = Function(canary)
            self._retire(fn.main, canary)
        log.info("%s: canary revision %d promoted; revision %d drains", name, canary.revision.number,
                 fn.main.revision.number)

    async def drop_canary(self, name: str) -> None:
        async with self._lock(name):
            fn, canary = self._canary(name, "drop")
            fn.canary, fn.canary_percent = None, 0
            self._retire(canary, fn.main)
        log.info("%s: canary revision %d dropped; revision %d serves everything", name, canary.revision.number,
                 fn.main.revision.number)

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
        self._restarts.pop(name, None)
        self._rejections.pop(name, None)
        tracks = list(fn.tracks())
        for track in tracks:
            track.activator.fail_waiting(f"function {name!r} was deleted")
        await asyncio.gather(*(self._drain(t, r) for t in tracks for r in list(t.activator.replicas)))

    # -- replicas ------------------------------------------------------------------------------
    def _new_replica(self, track: Track) -> Replica | None:
        """Register a replica before it starts, so concurrent decisions count it as on its way; None
        when the GPUs it needs are all held (it is then started once some are given back)."""
        revision = track.revision
        replica = Replica(revision, track.manifest_path, self._log_dir(revision.name))
        wanted = revision.function.spec.resources.gpu
        if wanted:
            gpus = self.gpus.take(wanted, replica.id)
            if gpus is None:
                track.message = f"waiting for {wanted} free GPU(s)"
                return None
            replica.gpus = gpus
        track.activator.replicas.append(replica)
        self._replicas[replica.id] = (track, replica)
        return replica

    async def _start_replica(self, track: Track, replica: Replica, *, deploying: bool = False) -> Replica:
        revision = track.revision
        started = time.monotonic()
        try:
            await replica.start(self.settings, self._launcher(revision.function.spec.runtime))
            await replica.wait_ready(self.settings.replica_ready_timeout)
        except (ReplicaFailed, OSError) as exc:
            await replica.stop(self.settings.replica_stop_timeout)
            self._forget(track, replica)
            track.failures += 1
            track.next_start_at = time.monotonic() + min(_MAX_BACKOFF, 0.5 * 2 ** (track.failures - 1))
            track.message = f"{revision.name} revision {revision.number} did not start: {exc}"
            if not deploying:  # a deploy's proof failing is the deploy's answer (422), not a restart
                self._restarted(revision.name, "start_failed")
                if not track.live():
                    track.activator.fail_waiting(track.message)
            raise DeployFailed(track.message) from None
        track.failures, track.message = 0, ""
        track.start_times_ms.append((time.monotonic() - started) * 1000)
        self._tasks.spawn(self._watch(track, replica))
        self._tasks.spawn(replica.watch_serving())
        track.activator.dispatch()
        return replica

    async def _start_in_background(self, track: Track, replica: Replica) -> None:
        with contextlib.suppress(DeployFailed):
            await self._start_replica(track, replica)

    def _start_missing(self, track: Track, desired: int) -> None:
        missing = desired - len(track.live())
        if missing > 0 and time.monotonic() >= track.next_start_at and not self._closing:
            for _ in range(missing):
                replica = self._new_replica(track)
                if replica is None:
                    break
                self._tasks.spawn(self._start_in_background(track, replica))

    def _forget(self, track: Track, replica: Replica) -> None:
        if replica in track.activator.replicas:
            track.activator.replicas.remove(replica)
        if replica.outstanding == 0:
            self._replicas.pop(replica.id, None)
        if replica.gpus:
            replica.gpus = []
            self.gpus.give_back(replica.id)  # waiting replicas, then queued jobs, are told

    def _tracks(self) -> list[Track]:
        """Every track that serves (main and canary of every function)."""
        return [track for fn in list(self._functions.values()) for track in fn.tracks()]

    def _serves(self, track: Track) -> bool:
        fn = self._functions.get(track.name)
        return fn is not None and fn.holds(track)

    def _gpus_freed(self) -> None:
        """Replicas waiting for GPUs start as soon as a replica or a job gives some back."""
        for other in self._tracks():
            if other.revision.function.spec.resources.gpu and len(other.live()) < other.desired:
                self._start_missing(other, other.desired)

    async def _drain(self, track: Track, replica: Replica) -> None:
        """Take a replica out of rotation, let in-flight requests finish (up to drain_timeout), stop it."""
        if replica.state == "ready":
            replica.state = "draining"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(replica.idle.wait(), self.settings.drain_timeout)
        await replica.stop(self.settings.replica_stop_timeout)
        self._forget(track, replica)

    async def _watch(self, track: Track, replica: Replica) -> None:
        """A replica that exits on its own leaves the rotation at once; reconcile replaces it."""
        assert replica.process is not None
        code = await replica.process.wait()
        if not self._closing:
            self._fail(track, replica, "exited", f"exited with code {code}")  # no-op for one we stopped ourselves

    def _restarted(self, name: str, reason: str) -> None:
        counts = self._restarts.setdefault(name, {})
        counts[reason] = counts.get(reason, 0) + 1

    def _fail(self, track: Track, replica: Replica, reason: str, why: str) -> None:
        """Out of rotation now, killed, replaced by the next reconcile (once: a stopped or failed replica
        is left alone). ``reason`` is one of base.RESTART_REASONS, ``why`` the log's words."""
        if replica.state in ("stopped", "failed"):
            return
        self._restarted(track.name, reason)
        replica.kill()
        self._forget(track, replica)
        track.message = f"replica {replica.id} {why}"
        log.warning("%s: %s; replacing it", track.name, track.message)
        if self._serves(track) and not self._closing:
            self.reconcile(track)

    def unreachable(self, endpoint: Endpoint) -> None:
        found = self._replicas.get(endpoint.replica)
        if found is not None:
            self._fail(found[0], found[1], "unreachable", "failed a connection")

    async def _probe(self, track: Track, replica: Replica) -> None:
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
            self._fail(track, replica, "unresponsive",
                       f"stopped answering ({replica.probe_failures} health checks failed)")

    # -- scaling ---------------------------------------------------------------------------------
    def reconcile(self, track: Track, *, poke: bool = False) -> None:
        """One autoscaler decision for ``track``, then start or drain replicas to match it."""
        now = time.monotonic()
        decision = decide(track.activator.recorder.samples(now), track.activator.ready_count(), track.params, now,
                          track.scaler, track.since)
        track.scaler, track.panic = decision.state, decision.panic
        desired = max(decision.desired, 1) if poke else decision.desired
        track.desired = desired
        live = track.live()
        if len(live) < desired:
            self._start_missing(track, desired)
        elif len(live) > desired:
            # stop idle ready replicas first, newest first; a starting one only if nothing else is left
            victims = sorted(live, key=lambda r: (r.state != "ready", r.outstanding, -r.started_at))
            for replica in victims[:len(live) - desired]:
                self._tasks.spawn(self._drain(track, replica))

    def _ensure_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = detached(self._tick_forever())

    async def _tick_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.autoscale_tick)
            for track in self._tracks():
                try:
                    self.reconcile(track)
                except Exception:  # one function's bug must not stop scaling for the others
                    log.exception("%s: autoscaler tick failed", track.name)
                for replica in track.activator.replicas:
                    if replica.state == "ready" and not replica.probing:
                        self._tasks.spawn(self._probe(track, replica))
            try:  # the choice in the loop (a replica starting meanwhile must not lose its new folder), the copies
                due = self._tidy_logs()  # of a rotation in a thread
                if due:
                    await asyncio.to_thread(replica_logs.rotate_all, due)
            except OSError as exc:
                log.warning("could not rotate or remove replica logs: %s", exc)

    # -- the request path ---------------------------------------------------------------------
    async def acquire(self, name: str, canary: bool = False) -> Endpoint:
        """A replica of the track the router picked; a canary promoted or dropped since it picked one is
        the main track's business now, so those requests go there."""
        fn = self._function(name)
        track = (fn.canary if canary else None) or fn.main
        if not track.live():
            if time.monotonic() < track.next_start_at and track.message:
                raise NoReadyReplica(f"function {name!r} has no ready replica: {track.message}")
            self.reconcile(track, poke=True)
        try:
            replica, cold_ms = await track.activator.acquire()
        except QueueFull:
            self._rejections[name] = self._rejections.get(name, 0) + 1
            raise
        if cold_ms is not None and not replica.cold_start_told:
            replica.cold_start_told = True
            replica.cold_start = cold_start_of(replica, cold_ms)
            fn.cold_starts.appendleft(replica.cold_start)
            return Endpoint(name, replica.id, replica.url, cold_ms, first_cold=True)
        return Endpoint(name, replica.id, replica.url, cold_ms)

    def release(self, endpoint: Endpoint) -> None:
        found = self._replicas.get(endpoint.replica)  # the replica id names its track, whichever it is now
        if found is None:
            return
        track, replica = found
        track.activator.release(replica)
        if replica.state in ("stopped", "failed") and replica.outstanding == 0:
            self._replicas.pop(replica.id, None)

    # -- inspection ------------------------------------------------------------------------------
    def status(self, name: str) -> FunctionStatus:
        """The main track's readiness; replicas, wishes and queues of both tracks together."""
        fn = self._function(name)
        main, canary, tracks = fn.main, fn.canary, list(fn.tracks())
        replicas = [ReplicaStatus(r.id, r.revision.number, r.state, r.url, r.pid, r.outstanding, r.started_at, r.gpus)
                    for _, r in self._replicas.values() if r.revision.name == name and r.state != "stopped"]
        ready = main.activator.ready_count() > 0 or (main.desired == 0 and not main.message)
        message = main.message or (f"canary: {canary.message}" if canary is not None and canary.message else "")
        return FunctionStatus(name, main.revision.number, ready, replicas, message,
                              desired=sum(t.desired for t in tracks), panic=any(t.panic for t in tracks),
                              queued=sum(t.activator.queued for t in tracks),
                              start_times_ms=[round(t) for t in main.start_times_ms],
                              canary_revision=canary.revision.number if canary is not None else None,
                              canary_percent=fn.canary_percent, restarts=dict(self._restarts.get(name, {})),
                              queue_rejections=self._rejections.get(name, 0), cold_starts=list(fn.cold_starts))

    async def logs(self, name: str, tail: int) -> str:
        if name not in self._functions:
            raise FunctionNotFound(f"function {name!r} not found")
        return await asyncio.to_thread(self._read_logs, name, tail)

    def _read_logs(self, name: str, tail: int) -> str:
        """The newest replica logs of a function, newest last, ``tail`` lines from each."""
        return replica_logs.read_tails(self._log_dir(name), tail)

    def follow_logs(self, name: str, tail: int) -> AsyncIterator[bytes]:
        self._function(name)
        return replica_logs.follow(self._log_dir(name), tail, lambda: name in self._functions and not self._closing)

    def _tidy_logs(self) -> list[Path]:
        """Remove the replica logs no longer wanted; the ones to rotate (see replica_logs.tidy)."""
        serving = {name: {track.revision.id for track in fn.tracks()} for name, fn in self._functions.items()}
        for _, replica in self._replicas.values():  # a revision being proved is not serving yet
            serving.setdefault(replica.revision.name, set()).add(replica.revision.id)
        live = {replica.log_path for _, replica in self._replicas.values()}
        return replica_logs.tidy(self.settings.state_dir / "logs", serving, live, self.settings.replica_log_max_bytes,
                                 self.settings.replica_log_keep_seconds)

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
