"""Limits arithmetic with a fake clock: what GCRA admits, how limits resolve, what the headers say."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fnserve.accounting import Tally, seconds_to_midnight, utc_day
from fnserve.router.quota import DailyCounters, Limits, MemoryStore, gcra, rate_headers
from fnserve.state import StateStore


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def admitted(store: MemoryStore, clock: FakeClock, times: list[float], rate: float, burst: int) -> int:
    async def run() -> int:
        count = 0
        for t in times:
            clock.now = 1_000_000.0 + t
            count += (await store.rate("k", rate, burst)).allowed
        return count
    return asyncio.run(run())


@pytest.mark.parametrize(("rate", "burst", "n"), [(10, 5, 100), (1, 1, 10), (0.5, 3, 7), (100, 50, 500)])
def test_a_burst_at_one_instant_admits_exactly_the_burst(rate: float, burst: int, n: int) -> None:
    clock = FakeClock()
    assert admitted(MemoryStore(clock), clock, [0.0] * n, rate, burst) == min(n, burst)


def test_steady_arrivals_admit_burst_plus_rate_times_elapsed() -> None:
    clock = FakeClock()
    times = [i * 0.01 for i in range(1000)]  # 100 requests/s offered for 10 s against 5/s, burst 10
    assert admitted(MemoryStore(clock), clock, times, 5, 10) == 10 + 5 * 10 - 1  # last arrival is at 9.99 s


def test_retry_after_is_exact_and_remaining_counts_down() -> None:
    now = 50.0
    result, tat = None, None
    remaining = []
    for _ in range(3):
        result = gcra(tat, now, rate=2, burst=3)
        tat = result.tat
        remaining.append(result.remaining)
    assert remaining == [2, 1, 0]
    refused = gcra(tat, now, rate=2, burst=3)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    assert gcra(tat, now + 0.5, rate=2, burst=3).allowed


def test_concurrency_counts_in_flight() -> None:
    async def run() -> list[bool]:
        store = MemoryStore()
        got = [await store.acquire("k", 2) for _ in range(3)]
        await store.release("k", "k")
        got.append(await store.acquire("k", 2))
        return [token is not None for token in got]
    assert asyncio.run(run()) == [True, True, False, True]


def test_limits_resolve_key_over_tenant_over_default() -> None:
    default = Limits(rps=100, burst=200, concurrency=50, daily=None)
    tenant = Limits(rps=10, daily=1000)
    key = Limits(concurrency=2)
    assert key.over(tenant.over(default)) == Limits(rps=10, burst=200, concurrency=2, daily=1000)
    assert Limits(rps=3).effective_burst == 3 and Limits(rps=0.2).effective_burst == 1


def test_rate_headers_follow_the_ietf_draft_and_the_x_ratelimit_trio() -> None:
    result = gcra(None, 0.0, rate=5, burst=10)
    headers = dict(rate_headers(Limits(rps=5, burst=10), result))
    assert headers[b"ratelimit-policy"] == b'"default";q=10;w=2'
    assert headers[b"ratelimit"] == b'"default";r=9;t=1'
    assert headers[b"x-ratelimit-limit"] == b"10" and headers[b"x-ratelimit-remaining"] == b"9"


def test_daily_quota_counts_survive_a_new_counter_on_the_same_database(tmp_path: Path) -> None:
    now = 1_700_000_000.0

    async def take(counters: DailyCounters, n: int) -> list[bool]:
        return [(await counters.take("key1", 5, now))[0] for _ in range(n)]

    state = StateStore(tmp_path / "db")
    first = DailyCounters(state)
    assert asyncio.run(take(first, 3)) == [True] * 3
    first.flush()
    second = DailyCounters(StateStore(tmp_path / "db"))  # a restarted router
    assert asyncio.run(take(second, 3)) == [True, True, False]
    assert utc_day(now) == "2023-11-14" and seconds_to_midnight(now) == pytest.approx(86400 - now % 86400)


def test_usage_tally_p95_is_within_ten_percent() -> None:
    tally = Tally()
    for ms in range(1, 1001):
        tally.add(200 if ms % 10 else 503, float(ms), ms / 2)
    p95 = tally.percentile_ms(0.95)
    assert 950 <= p95 <= 950 * 1.1
    summary = Tally.from_json(tally.to_json()).summary()
    assert summary["requests"] == 1000 and summary["serverErrors"] == 100 and summary["p95Ms"] == p95


def test_a_daily_count_that_could_not_be_read_is_read_again(tmp_path: Path) -> None:
    """The database down at a subject's first request of the day: that request fails, the next reads."""
    from fnserve.database import StoreUnavailable

    state = StateStore(tmp_path / "db")
    state.add_daily_counts({("k", utc_day(1_800_000_000.0)): 4})
    counters = DailyCounters(state)
    real = state.daily_count
    calls = []

    def flaky(subject: str, day: str) -> int:
        calls.append(subject)
        if len(calls) == 1:
            raise StoreUnavailable("down")
        return real(subject, day)

    state.daily_count = flaky  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        asyncio.run(counters.take("k", 5, 1_800_000_000.0))
    assert asyncio.run(counters.take("k", 5, 1_800_000_000.0)) == (True, 0)
