"""A function on this machine as the backend holds it: its main track and, during a canary, a second one.

A track is one revision's replicas with everything that scales them — its own Activator (queue and
dispatch) and autoscaler state — so a canary scales from zero and back on its own traffic, exactly as
the main revision does on its share, and promoting it hands over running replicas instead of starting
new ones.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fnserve.backends.base import ColdStart
from fnserve.backends.local.activator import Activator
from fnserve.backends.local.autoscaler import ConcurrencyRecorder, Params, State
from fnserve.backends.local.replica import Replica
from fnserve.records import Revision

LIVE = ("starting", "ready")
COLD_STARTS_KEPT = 20


def cold_start_of(replica: Replica, waited_ms: float, now: float | None = None) -> ColdStart:
    """Split the first waiting request's ``waited_ms`` (it is dispatched ``now``) by the replica's start:
    launch → its code runs → model built → loaded → ready heard, each phase as much of it as fell within
    the wait (a request that came after the launch waited for part of it); the rest was queueing (before
    the launch, after the ready signal). The server's part comes when the replica says it serves."""
    now = time.time() if now is None else now
    phases: list[float | None] = [None] * 4
    queue_ms = None
    times = replica.times
    if times is not None:
        arrived = now - waited_ms / 1000
        bounds = [replica.launched_at, times.started_at, times.built_at, times.loaded_at, replica.ready_at]
        phases = [max(0.0, min(end, now) - max(start, arrived)) * 1000 for start, end in itertools.pairwise(bounds)]
        queue_ms = max(0.0, waited_ms - sum(p for p in phases if p is not None))
    record = ColdStart(now, replica.revision.number, replica.id, waited_ms, queue_ms, *phases)
    if replica.serving_at:
        record.served(replica.serving_at)
    return record


@dataclass
class Track:
    """One revision's replicas and the state that scales them."""

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

    @classmethod
    def of(cls, revision: Revision, manifest_path: Path, queue_limit: int, timeout: float) -> Track:
        params = Params.from_scaling(revision.function.spec.scaling)
        now = time.monotonic()
        recorder = ConcurrencyRecorder(now, params.stable_window)
        activator = Activator(revision.name, params.container_concurrency, queue_limit, timeout, recorder)
        return cls(revision, manifest_path, params, activator, since=now)

    @property
    def name(self) -> str:
        return self.revision.name

    def live(self) -> list[Replica]:
        return [r for r in self.activator.replicas if r.state in LIVE]


@dataclass
class Function:
    """The track that serves, and the canary beside it with its share of the traffic (the router uses the
    share to pick a track per request; here it is only reported)."""

    main: Track
    canary: Track | None = None
    canary_percent: int = 0
    cold_starts: deque[ColdStart] = field(default_factory=lambda: deque(maxlen=COLD_STARTS_KEPT))
    """The newest cold starts of either track, newest first."""

    def tracks(self) -> Iterator[Track]:
        yield self.main
        if self.canary is not None:
            yield self.canary

    def holds(self, track: Track) -> bool:
        """Is ``track`` still one of this function's (not replaced, promoted over or dropped)?"""
        return any(t is track for t in self.tracks())
