"""What the router needs from a backend, as two protocols: Serving (replicas) and Training (jobs).

The router knows functions, revisions and HTTP; a backend knows processes or pods. Serving and training
are separate protocols because they share nothing but the machine: each backend implements them as two
objects built by one factory (``fnserve.backends.local.create``, ``fnserve.backends.knative.create``),
which hands both what they share (the GPU inventory, the cluster API client). Errors a backend raises
are typed and carry the HTTP status and Retry-After the router should answer with, so the router maps
them without knowing why they happened.

A function serves one revision (its main track) and may run a second beside it, a canary, that takes a
percent of its traffic until it is promoted or dropped. Who divides the traffic differs: a cluster splits
it itself (KServe's canaryTrafficPercent, ``splits_traffic``), on one machine the router picks a track
per request and asks ``acquire(name, canary=True)`` for the canary's replicas.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fnserve.manifest import TrainingJob
from fnserve.records import JobRecord, Revision, Rollout

RESTART_REASONS = ("exited", "unresponsive", "unreachable", "start_failed")
"""Why a backend replaced a replica: it exited on its own, failed its health checks, failed a connection the
router made, or a replica started to serve (not a deploy's proof) never became ready."""


@dataclass(frozen=True)
class Endpoint:
    """A ready replica chosen for one request; handed back through Serving.release()."""

    function: str
    replica: str
    url: str
    cold_start_ms: float | None = None
    """Set when the request waited for a replica to start (the X-Fnserve-Cold-Start header)."""
    first_cold: bool = False
    """The first request the replica's start made wait: one per cold start, however many waited."""


@dataclass
class ReplicaStatus:
    id: str
    revision: int
    state: str
    url: str
    pid: int | None
    outstanding: int
    started_at: float
    gpus: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, "state": self.state, "url": self.url,
                "pid": self.pid, "outstanding": self.outstanding, "startedAt": self.started_at, "gpus": self.gpus}


@dataclass
class ColdStart:
    """Where one cold start's time went, from the first waiting request's view. Until the replica was
    ready it waited in the router (``waited``, what X-Fnserve-Cold-Start says): for a start to begin and,
    after the replica said ready, to be dispatched (``queue``); for the process to exist (``fork``: a fork
    or an exec); for the imports and construction left (``imports``); for the model's load (``load``); for
    the router to hear the replica's ready signal (``ready``). Then it waited in the replica's accept queue
    for its server to accept (``server``, known once the replica says it serves). None where the replica
    did not say."""

    at: float
    revision: int
    replica: str
    waited_ms: float
    queue_ms: float | None
    fork_ms: float | None
    imports_ms: float | None
    load_ms: float | None
    ready_ms: float | None
    server_ms: float | None = None

    def served(self, serving_at: float) -> None:
        """The replica's server accepted from ``serving_at`` on (unix seconds)."""
        self.server_ms = max(0.0, serving_at - self.at) * 1000

    @property
    def total_ms(self) -> float:
        return self.waited_ms + (self.server_ms or 0.0)

    def to_dict(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {"at": self.at, "revision": self.revision, "replica": self.replica, "totalMs": ms(self.total_ms),
                "waitedMs": ms(self.waited_ms), "queueMs": ms(self.queue_ms), "forkMs": ms(self.fork_ms),
                "importsMs": ms(self.imports_ms), "loadMs": ms(self.load_ms), "readyMs": ms(self.ready_ms),
                "serverMs": ms(self.server_ms)}


@dataclass
class FunctionStatus:
    name: str
    revision: int | None
    ready: bool
    replicas: list[ReplicaStatus] = field(default_factory=list)
    message: str = ""
    desired: int | None = None
    panic: bool = False
    queued: int = 0
    start_times_ms: list[float] = field(default_factory=list)
    url: str = ""
    """Where the backend serves the function, when it has an address of its own (a cluster)."""
    canary_revision: int | None = None
    """The revision running beside ``revision`` as its canary (its replicas are in ``replicas`` too)."""
    canary_percent: int = 0
    """The share of traffic the canary takes; 0 when there is none."""
    restarts: dict[str, int] | None = None
    """Replicas replaced since the backend started, by reason (RESTART_REASONS); None where the backend does
    not replace them itself (in a cluster Kubernetes does)."""
    queue_rejections: int | None = None
    """Requests refused (503) since the backend started because the function's queue was full; None where the
    queue is not the backend's (a cluster's is Knative's activator)."""
    cold_starts: list[ColdStart] = field(default_factory=list)
    """The last cold starts, newest first (empty where the backend cannot see them split)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision, "ready": self.ready, "message": self.message,
                "address": self.url,
                "replicas": [r.to_dict() for r in self.replicas], "desired": self.desired, "panic": self.panic,
                "queued": self.queued, "startTimesMs": self.start_times_ms,
                "canaryRevision": self.canary_revision, "canaryPercent": self.canary_percent,
                "coldStarts": [c.to_dict() for c in self.cold_starts]}


class BackendError(Exception):
    """A failure the router turns into an HTTP answer."""

    status = 503
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class FunctionNotFound(BackendError):
    status = 404


class NoReadyReplica(BackendError):
    """No replica can take the request now (starting, crashed, or none)."""

    status = 503
    retry_after = 1


class DeployFailed(BackendError):
    """The new revision never became ready; the previous one (if any) keeps serving."""

    status = 422


class NoCanary(BackendError):
    """Promote or drop of a function that runs no canary."""

    status = 409


def canary_percent(percent: int) -> int:
    """``percent`` as a canary's share of traffic: 0 (no canary) or 1..99. A canary at 100 would be a
    redeploy that keeps the old revision running for nothing; the router checks users' input first, so
    anything else here is a bug in the caller."""
    if not 0 <= percent <= 99:
        raise ValueError(f"a canary takes 1 to 99 percent of the traffic (0: no canary), not {percent}")
    return percent


class JobNotFound(BackendError):
    status = 404


class JobFinished(BackendError):
    """Cancel of a job that has already ended."""

    status = 409


class Serving(Protocol):
    """Functions' replicas: deploy a revision, hand out a ready replica per request, report status."""

    fetches_models: bool
    """True when replicas load the model from this machine's cache (the router fetches and verifies it
    at deploy); False when they download it themselves (a cluster's storage initializer)."""
    shared: bool
    """True when every router sees the same serving state (a cluster: one InferenceService per function);
    False when each router runs replicas of its own (local), so a change another router made must be
    applied here too."""

    splits_traffic: bool
    """True when the backend divides a function's traffic between its revision and its canary itself (a
    cluster: one address, KServe's canaryTrafficPercent); False when the router picks the track of each
    request and says so to acquire()."""

    async def start(self) -> None:
        """Called once the router's event loop runs, before functions are restored."""

    async def apply(self, revision: Revision, *, verify: bool = True, canary: int = 0) -> None:
        """Make ``revision`` the one serving its function (a canary, if any, is stopped too). With ``verify``
        (a deploy) it returns once the revision has proved it starts; without (a restore) it only has to
        be registered. If it fails to start (DeployFailed), what served before serves on.

        ``canary`` 1..99: start ``revision`` beside the function's current one, as its canary taking that
        percent of the traffic, instead; the current revision is not touched, an earlier canary is
        replaced. A function with no current revision has no canary: FunctionNotFound."""

    def follow(self, name: str, rollout: Rollout | None) -> None:
        """A shared backend (``shared``): another router applied ``rollout`` (None: removed the function);
        take it as this backend's state without applying anything. Backends that are not shared are
        never asked (each router applies changes to its own replicas)."""

    async def promote(self, name: str) -> None:
        """The canary becomes the function's only revision; the previous one is drained as in a redeploy.
        Raises FunctionNotFound, or NoCanary when there is none."""

    async def drop_canary(self, name: str) -> None:
        """Stop the canary; the current revision serves everything. Raises FunctionNotFound or NoCanary."""

    async def delete(self, name: str) -> None:
        """Stop every replica of a function, its canary's too."""

    async def acquire(self, name: str, canary: bool = False) -> Endpoint:
        """A ready replica for one request, of the canary when ``canary`` (a function without one — say,
        promoted a moment ago — answers from its current revision); raises FunctionNotFound or
        NoReadyReplica. A backend that splits traffic itself ignores ``canary``."""

    def release(self, endpoint: Endpoint) -> None:
        """The request acquire() was for has finished."""

    def unreachable(self, endpoint: Endpoint) -> None:
        """The replica behind ``endpoint`` failed a request at the connection (refused it, or closed the
        connection without answering): take it out of rotation."""

    def status(self, name: str) -> FunctionStatus:
        """Replicas and readiness of one function; raises FunctionNotFound."""

    async def logs(self, name: str, tail: int) -> str:
        """The last ``tail`` lines of the function's replica logs."""

    def follow_logs(self, name: str, tail: int) -> AsyncIterator[bytes]:
        """Those lines, then what the replicas write next, as it comes (``kubectl logs -f``); raises
        FunctionNotFound at once, before the stream starts."""

    async def close(self) -> None:
        """Stop everything; called when the router shuts down, after Training.close()."""


class Training(Protocol):
    """Training jobs: run a TrainingJob through the job wrapper, follow it, keep its record.

    What a finished job deploys is the router's decision (Platform), written once for every backend."""

    async def start(self) -> None:
        """Called once the router's event loop runs (a cluster follows runs that outlived a restart)."""

    async def submit_job(self, job: TrainingJob, source_dir: Path, params: dict[str, Any]) -> JobRecord:
        """Queue a training job (its command runs in ``source_dir``); returns its record at once."""

    def job_status(self, job_id: str) -> JobRecord:
        """Raises JobNotFound."""

    def jobs(self, limit: int) -> list[JobRecord]:
        """The newest jobs, newest first."""

    def job_logs(self, job_id: str, follow: bool) -> AsyncIterator[bytes]:
        """The job's log from its start; with ``follow``, until the job ends."""

    async def wait_job(self, job_id: str) -> JobRecord:
        """The record once the job has ended."""

    async def cancel_job(self, job_id: str) -> JobRecord:
        """Stop a queued or running job; it publishes nothing."""

    async def close(self) -> None:
        """Cancel queued jobs and stop running ones; called when the router shuts down, before
        Serving.close() (which may own what the two share)."""
