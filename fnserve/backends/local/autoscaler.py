"""Knative's KPA scaling decision, as a pure function.

Inputs are plain data: per-second average concurrency (requests in flight on replicas plus requests
waiting in the activator), the number of ready replicas, the parameters, the time and the previous
decision's state; the output is the desired replica count and the next state. No clock, no I/O, so it
is tested on recorded traces with a fake clock, and the backend only has to feed it.

It follows Knative Serving's autoscaler (pkg/autoscaler/scaling/autoscaler.go) step for step:

    TargetValue = max(0.01, (min(target, CC) if CC > 0 else target) × utilization)
    stable, panic = averages over the stable and panic windows (1 s buckets, gaps = 0, partial at start)
    dspc, dppc = ceil(stable / TV), ceil(panic / TV), each clamped to [floor(ready / 2), ceil(1000 × ready)]
    panic while dppc / ready ≥ threshold, and for a whole stable window after; in panic the count never
    drops below the panic peak; then the scale-down delay, min/max, and scale to zero only after a
    whole stable window at exactly zero plus the grace period.

One deliberate difference (docs/scaling.md): with containerConcurrency set and no explicit
targetUtilizationPercentage, fnserve aims at 100% of the hard limit. Knative's default 70% makes a
single request to a concurrency-1 model ask for ceil(1 / 0.7) = 2 pods; on one machine that spare
replica is a second copy of the model in memory, and the activator already queues what a full replica
cannot take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from fnserve.manifest import Scaling

MAX_SCALE_UP_RATE = 1000.0
MAX_SCALE_DOWN_RATE = 2.0


@dataclass(frozen=True)
class Params:
    min_replicas: int = 0
    max_replicas: int | None = None
    target: float = 100.0
    container_concurrency: int = 0
    utilization: float = 0.7
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold: float = 2.0
    scale_down_delay: float = 0.0
    scale_to_zero_grace: float = 30.0

    @classmethod
    def from_scaling(cls, scaling: Scaling) -> Params:
        utilization = scaling.target_utilization_percentage / 100
        if scaling.container_concurrency > 0 and "target_utilization_percentage" not in scaling.model_fields_set:
            utilization = 1.0
        return cls(min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas,
                   target=float(scaling.scale_target), container_concurrency=scaling.container_concurrency,
                   utilization=utilization, stable_window=scaling.stable_window,
                   panic_window_percentage=scaling.panic_window_percentage,
                   panic_threshold=scaling.panic_threshold_percentage / 100,
                   scale_down_delay=scaling.scale_down_delay,
                   scale_to_zero_grace=scaling.scale_to_zero_grace_period)

    @property
    def target_value(self) -> float:
        """Concurrency one replica should carry."""
        base = min(self.target, self.container_concurrency) if self.container_concurrency > 0 else self.target
        return max(0.01, base * self.utilization)

    @property
    def panic_window(self) -> float:
        return max(1.0, self.stable_window * self.panic_window_percentage / 100)


@dataclass(frozen=True)
class State:
    """What one decision remembers for the next."""

    panic_since: float | None = None
    """Last time the panic threshold was met; None when not in panic."""
    panic_peak: int = 0
    zero_since: float | None = None
    """When the scale-to-zero grace period started (a full stable window at zero was first seen)."""
    recent: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    """(time, desired) within the scale-down delay."""


@dataclass(frozen=True)
class Decision:
    desired: int
    panic: bool
    stable_concurrency: float
    panic_concurrency: float
    state: State


def window_average(samples: Mapping[int, float], now: float, window: float, since: float) -> float:
    """Average of per-second buckets over the trailing ``window`` seconds ending at ``now``.

    Seconds without a sample count as zero; until ``window`` seconds have passed since ``since`` (when
    observation began) the average is over the seconds observed so far, as Knative does after a start.
    """
    last = math.floor(now)
    width = max(1, round(window))
    observed = max(1, last - math.floor(since) + 1)
    count = min(width, observed)
    first = last - count + 1
    return sum(v for k, v in samples.items() if first <= k <= last) / count


def decide(samples: Mapping[int, float], ready: int, params: Params, now: float, state: State,
           since: float) -> Decision:
    """One autoscaling decision; ``since`` is when concurrency observation of this revision began."""
    value = params.target_value
    stable = window_average(samples, now, params.stable_window, since)
    panic = window_average(samples, now, params.panic_window, since)
    ready_count = max(1, ready)
    low = math.floor(ready_count / MAX_SCALE_DOWN_RATE)
    high = math.ceil(ready_count * MAX_SCALE_UP_RATE)
    stable_pods = min(max(math.ceil(stable / value), low), high)
    panic_pods = min(max(math.ceil(panic / value), low), high)

    panic_since = state.panic_since
    if panic_pods / ready_count >= params.panic_threshold:
        panic_since = now  # enter, or extend
    elif panic_since is not None and now - panic_since >= params.stable_window:
        panic_since = None
    if panic_since is not None:
        desired = max(stable_pods, panic_pods, state.panic_peak)
        peak = desired
    else:
        desired, peak = stable_pods, 0

    recent: tuple[tuple[float, int], ...] = ()
    if params.scale_down_delay > 0:
        recent = tuple((t, d) for t, d in state.recent if now - t < params.scale_down_delay) + ((now, desired),)
        desired = max(d for _, d in recent)

    zero_since = None
    if desired == 0 and ready > 0:
        if stable == 0 and now - since >= params.stable_window:
            zero_since = state.zero_since if state.zero_since is not None else now
        if zero_since is None or now - zero_since < params.scale_to_zero_grace:
            desired = 1  # keep the last replica through a full idle window and the grace period

    desired = max(desired, params.min_replicas)
    if params.max_replicas is not None:
        desired = min(desired, params.max_replicas)
    next_state = replace(state, panic_since=panic_since, panic_peak=peak, zero_since=zero_since, recent=recent)
    return Decision(desired, panic_since is not None, stable, panic, next_state)


class ConcurrencyRecorder:
    """Time-weighted average concurrency per whole second, fed with every change (explicit clock).

    Knative's queue-proxy reports the average concurrency of each second; here the activator reports
    every +1 (request queued or dispatched) and -1 (request finished), and the integral over each second
    gives the same number exactly, without sampling.
    """

    def __init__(self, now: float, keep_seconds: float) -> None:
        self.value = 0
        self._last = now
        self._keep = int(keep_seconds) + 2
        self._buckets: dict[int, float] = {}

    def _advance(self, now: float) -> None:
        if self.value and now > self._last:
            t = self._last
            while t < now:
                second = math.floor(t)
                end = min(now, second + 1.0)
                self._buckets[second] = self._buckets.get(second, 0.0) + self.value * (end - t)
                t = end
        self._last = max(self._last, now)

    def add(self, now: float, delta: int) -> None:
        self._advance(now)
        self.value += delta

    def samples(self, now: float) -> dict[int, float]:
        """Per-second averages; the current second is averaged over the part of it seen so far (a raw
        partial integral would read 8 busy clients as 0.4 early in a second and delay a panic)."""
        self._advance(now)
        current = math.floor(now)
        for second in [s for s in self._buckets if s < current - self._keep]:
            del self._buckets[second]
        out = dict(self._buckets)
        elapsed = now - current
        if elapsed > 0 and current in out:
            out[current] = out[current] / elapsed
        elif self.value:
            out[current] = float(self.value)
        return out
