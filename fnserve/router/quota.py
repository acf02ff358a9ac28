"""Per-key limits: a rate (GCRA), a concurrency limit and a daily quota — of requests, and of tokens for
generative functions — and their HTTP headers.

GCRA (as in redis-cell) keeps one "theoretical arrival time" per subject: with rate R and burst B,
exactly B requests pass at once, then one every 1/R seconds, and the wait for the next one is exact.
The arithmetic is a pure function over an explicit clock; the stores (memory here for one router,
Redis in router/redis_quota.py for several, chosen by FNSERVE_REDIS_URL) only keep the numbers. Daily quotas
count in memory and are flushed to the database every second and at shutdown, so they survive restarts
without a database write per request; with Redis they are counted there, shared by every router
(router/redis_counters.py).

Tokens are the same arithmetic with a cost: a token rate of ``tpm`` per minute is a GCRA bucket of
``tpm / 60`` per second holding ``tpm`` (a minute's worth), and a request takes its reservation (its
``max_tokens``) from it at once. When the answer ends, :func:`settle` moves the bucket by the difference
between what was used and what was reserved — a refund, or a debt the next requests wait out — so the
long-run rate is exact and the overshoot is bounded by what the requests in flight did not reserve
(their prompts: docs/generative.md).

Resolution: a key's own value, else its tenant's default, else the global default (FNSERVE_DEFAULT_*);
a function's ``spec.limits`` overrides a field for calls to that function, counted per key × function.
Public functions are limited per client address with the function's or the global values.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, fields
from typing import Protocol

from fnserve.accounting import utc_day
from fnserve.state import StateStore


@dataclass(frozen=True)
class Limits:
    rps: float | None = None
    burst: int | None = None
    concurrency: int | None = None
    daily: int | None = None
    tpm: int | None = None
    tpd: int | None = None

    def over(self, base: Limits) -> Limits:
        """These values where set, ``base``'s elsewhere."""
        return Limits(*(getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name)
                        for f in fields(Limits)))

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.rps or 1))

    def to_dict(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in fields(Limits)}


@dataclass(frozen=True)
class RateResult:
    allowed: bool
    tat: float
    remaining: int
    reset: float
    retry_after: float


def gcra(tat: float | None, now: float, rate: float, burst: int, cost: float = 1) -> RateResult:
    """``cost`` units (one request, or a reservation of tokens; 0 only asks whether the bucket is in debt)
    against a GCRA bucket; ``tat`` is the stored theoretical arrival time."""
    interval = 1.0 / rate
    capacity = burst * interval
    current = max(tat or now, now)
    new_tat = current + cost * interval
    if new_tat - now > capacity + 1e-9:
        return RateResult(False, current, max(0, int((capacity - (current - now)) / interval + 1e-9)),
                          current - now, new_tat - capacity - now)
    remaining = int((capacity - (new_tat - now)) / interval + 1e-9)
    return RateResult(True, new_tat, remaining, new_tat - now, 0.0)


def settle(tat: float | None, now: float, rate: float, delta: float) -> float:
    """The bucket's new arrival time after ``delta`` units more (or, negative, fewer) than were taken: a
    refund never fills the bucket beyond full."""
    return max(max(tat or now, now) + delta / rate, now)


class Store(Protocol):
    """Where rate and concurrency state lives (this process, or Redis shared by several routers)."""

    async def rate(self, subject: str, rate: float, burst: int, cost: float = 1) -> RateResult: ...

    async def adjust(self, subject: str, rate: float, delta: float) -> None:
        """Settle a bucket: ``delta`` units more (negative: fewer) than its last ``rate`` call took."""

    async def acquire(self, subject: str, limit: int) -> str | None:
        """A token for one slot, or None when ``limit`` requests are already in flight."""

    async def release(self, subject: str, token: str) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self, clock: object = time.time) -> None:
        self.clock = clock
        self._tat: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}

    async def rate(self, subject: str, rate: float, burst: int, cost: float = 1) -> RateResult:
        result = gcra(self._tat.get(subject), self.clock(), rate, burst, cost)  # type: ignore[operator]
        if result.allowed:
            self._tat[subject] = result.tat
        return result

    async def adjust(self, subject: str, rate: float, delta: float) -> None:
        if delta:
            self._tat[subject] = settle(self._tat.get(subject), self.clock(), rate, delta)  # type: ignore[operator]

    async def acquire(self, subject: str, limit: int) -> str | None:
        if self._in_flight.get(subject, 0) >= limit:
            return None
        self._in_flight[subject] = self._in_flight.get(subject, 0) + 1
        return subject

    async def release(self, subject: str, token: str) -> None:
        left = self._in_flight.get(subject, 0) - 1
        if left > 0:
            self._in_flight[subject] = left
        else:
            self._in_flight.pop(subject, None)

    async def close(self) -> None:
        return None


class DailyCounters:
    """Requests per subject per UTC day: loaded from SQLite on first use, flushed in batches."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._counts: dict[tuple[str, str], int] = {}
        self._unflushed: dict[tuple[str, str], int] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[int]] = {}

    async def _count(self, subject: str, day: str) -> int:
        key = (subject, day)
        if key in self._counts:
            return self._counts[key]
        if key not in self._loading:
            self._loading[key] = asyncio.ensure_future(asyncio.to_thread(self.state.daily_count, subject, day))
        try:
            stored = await self._loading[key]
        finally:
            self._loading.pop(key, None)  # a failed read (the database down) is tried again next time
        self._counts.setdefault(key, stored)
        return self._counts[key]

    async def take(self, subject: str, limit: int, now: float, cost: int = 1) -> tuple[bool, int]:
        """Count ``cost`` (one request, or a reservation of tokens) if the day's quota has room for it;
        returns (allowed, remaining)."""
        day = utc_day(now)
        used = await self._count(subject, day)
        if used + max(cost, 1) > limit:
            return False, max(0, limit - used)
        self._add(subject, day, cost)
        return True, limit - used - cost

    async def used(self, subject: str, now: float) -> int:
        """What ``subject`` has used of its daily quota on the UTC day of ``now`` (read, nothing taken)."""
        return await self._count(subject, utc_day(now))

    async def add(self, subject: str, day: str, delta: int) -> None:
        """Change a day's count already loaded (a settled reservation: ``delta`` may be negative)."""
        self._add(subject, day, delta)

    def _add(self, subject: str, day: str, delta: int) -> None:
        key = (subject, day)
        if delta and key in self._counts:
            self._counts[key] += delta
            self._unflushed[key] = self._unflushed.get(key, 0) + delta

    def flush(self) -> None:
        """Write the counts since the last flush (blocking: call from a worker thread)."""
        pending, self._unflushed = self._unflushed, {}
        if pending:
            try:
                self.state.add_daily_counts(pending)
            except Exception:  # the database is down: keep the counts for the next flush
                for key, n in pending.items():
                    self._unflushed[key] = self._unflushed.get(key, 0) + n
                raise
        today = utc_day(time.time())
        for key in [k for k in self._counts if k[1] < today]:
            del self._counts[key]


_POLICIES: dict[Limits, tuple[tuple[bytes, bytes], tuple[bytes, bytes]]] = {}


def _policy(limits: Limits) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """The headers that depend only on the limits, formatted once per distinct limits."""
    policy = _POLICIES.get(limits)
    if policy is None:
        burst = limits.effective_burst
        window = max(1, math.ceil(burst / (limits.rps or 1)))
        if len(_POLICIES) > 10_000:
            _POLICIES.clear()
        policy = _POLICIES[limits] = ((b"ratelimit-policy", b'"default";q=%d;w=%d' % (burst, window)),
                                      (b"x-ratelimit-limit", b"%d" % burst))
    return policy


def token_headers(policy: str, quota: int, window: int, result: RateResult) -> list[tuple[bytes, bytes]]:
    """The RateLimit headers of a token policy (``"tokens"`` per minute, ``"tokens-daily"``)."""
    return [(b"ratelimit-policy", b'"%s";q=%d;w=%d' % (policy.encode(), quota, window)),
            (b"ratelimit", b'"%s";r=%d;t=%d' % (policy.encode(), result.remaining, max(0, math.ceil(result.reset))))]


def rate_headers(limits: Limits, result: RateResult) -> list[tuple[bytes, bytes]]:
    """IETF draft-ietf-httpapi-ratelimit-headers plus the common X-RateLimit-* trio (Reset in seconds)."""
    policy, limit = _policy(limits)
    reset = max(0, math.ceil(result.reset))
    return [policy, (b"ratelimit", b'"default";r=%d;t=%d' % (result.remaining, reset)), limit,
            (b"x-ratelimit-remaining", b"%d" % result.remaining), (b"x-ratelimit-reset", b"%d" % reset)]
