"""Load shapes: how many users to run at each moment of a load test.

Pure functions of elapsed time, so they are tested without Locust (importing Locust monkey-patches the
process with gevent); locustfile.py wraps the chosen one in a ``LoadTestShape``. Each shape answers
``at(seconds) -> (users, spawn_rate)``, or None once the test is over.

- ``steady``: ``users`` for the whole duration.
- ``step``: ``steps`` equal stages up to ``users`` (a ramp in stages: where does latency turn?).
- ``spike``: a quarter of ``users``, then all of them for a fifth of the duration, then a quarter
  again (does the autoscaler's panic mode catch it, and does the platform recover?).
- ``idle-gap``: bursts of ``users`` separated by silences longer than the function's scale-to-zero
  window, so every burst starts cold on purpose (cold starts get their own row in the report).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Tick = tuple[int, float] | None


@dataclass(frozen=True)
class ShapeParams:
    users: int = 8
    spawn_rate: float = 8.0
    duration: float = 60.0
    steps: int = 4
    """Stages of the step shape."""
    burst: float = 10.0
    """Seconds of load per burst in the idle-gap shape."""
    idle_gap: float = 60.0
    """Silence between bursts; keep it longer than scaleToZeroGracePeriod + stableWindow (40 s for the
    sentiment example), or nothing scales to zero."""


def steady(p: ShapeParams, t: float) -> Tick:
    return (p.users, p.spawn_rate) if t < p.duration else None


def step(p: ShapeParams, t: float) -> Tick:
    if t >= p.duration:
        return None
    stage = min(p.steps - 1, int(t // (p.duration / p.steps)))
    return max(1, math.ceil(p.users * (stage + 1) / p.steps)), p.spawn_rate


def spike(p: ShapeParams, t: float) -> Tick:
    if t >= p.duration:
        return None
    base = max(1, p.users // 4)
    start, end = p.duration * 0.4, p.duration * 0.6
    if start <= t < end:
        return p.users, max(p.spawn_rate, float(p.users))  # a spike arrives at once, not ramped
    return base, max(p.spawn_rate, float(p.users))  # and leaves at once


def idle_gap(p: ShapeParams, t: float) -> Tick:
    if t >= p.duration:
        return None
    period = p.burst + p.idle_gap
    return (p.users if t % period < p.burst else 0), max(p.spawn_rate, float(p.users))


SHAPES: dict[str, Callable[[ShapeParams, float], Tick]] = {
    "steady": steady, "step": step, "spike": spike, "idle-gap": idle_gap,
}


def shape(name: str) -> Callable[[ShapeParams, float], Tick]:
    """The shape function for a name, or a ValueError that lists the known ones."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown load shape {name!r}; known: {', '.join(SHAPES)}") from None
