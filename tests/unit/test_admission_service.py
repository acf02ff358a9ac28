"""The admission service with a fake clock: which limits apply to an invocation (key over tenant over
default; a function's ``spec.limits`` counted per key × function), what each refusal says and when to
retry, that a concurrency slot is given back by release(), and the order of the checks (a request
refused for rate or concurrency costs no daily quota).

Rates run on a MemoryStore whose clock the tests move; daily counts on DailyCounters over a real state
store in tmp_path, with each invocation's ``now`` set by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fnserve.accounting import utc_day
from fnserve.manifest import parse_function
from fnserve.records import Revision
from fnserve.router.invocation import Invocation, Principal
from fnserve.router.quota import DailyCounters, Limits, MemoryStore
from fnserve.router.services.admission import AdmissionService, Refusal
from fnserve.router.services.keys import KeyService
from fnserve.state import StateStore
from tests.unit.test_manifest import with_change

T = TypeVar("T")
MIDNIGHT = 1_699_920_000.0  # 2023-11-14T00:00:00Z
DEFAULTS = Limits(rps=100, burst=200, concurrency=50, daily=None)


class FakeClock:
    def __init__(self, now: float = MIDNIGHT + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def revision(name: str = "sentiment", limits: dict[str, Any] | None = None, number: int = 1) -> Revision:
    data = with_change("metadata.name", name)
    if limits is not None:
        data["spec"]["limits"] = limits
    return Revision(parse_function(data), number, Path("/src"), Path("/model"), time.time())


def key(key_id: str = "0123456789ab", tenant: str = "default", **limits: Any) -> Principal:
    return Principal(key_id, "ci", tenant, ("invoke:*",), limits)


class Harness:
    def __init__(self, tmp_path: Path, defaults: Limits = DEFAULTS) -> None:
        self.clock = FakeClock()
        self.state = StateStore(tmp_path / "fnserve.db")
        self.keys = KeyService(self.state, b"pepper")
        self.service = AdmissionService(self.keys, MemoryStore(self.clock), DailyCounters(self.state), defaults)

    def invocation(self, principal: Principal | None, rev: Revision) -> Invocation:
        invocation = Invocation(rev.name, rev, "predict", None, f"/v1/models/{rev.name}:predict", "rid")
        invocation.principal = principal
        invocation.now = self.clock.now
        return invocation

    async def admit(self, principal: Principal | None, rev: Revision, client: str = "10.0.0.7",
                    ) -> tuple[Invocation, Refusal | None]:
        invocation = self.invocation(principal, rev)
        return invocation, await self.service.admit(invocation, client)

    async def outcomes(self, principal: Principal | None, rev: Revision, n: int) -> list[str]:
        """``n`` calls at the same instant, each released at once: "ok" or the limit that refused it."""
        seen = []
        for _ in range(n):
            invocation, refused = await self.admit(principal, rev)
            await self.service.release(invocation)
            seen.append(refused.limit if refused else "ok")
        return seen


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_key_over_its_tenant_over_the_default(h: Harness) -> None:
    run(h.keys.set_tenant("acme", {"rps": 10, "daily": 1000}))
    limits, overridden = run(h.service.limits(key(tenant="acme", concurrency=2), revision()))
    assert limits == Limits(rps=10, burst=200, concurrency=2, daily=1000)
    assert overridden == frozenset()
    assert run(h.service.limits(key("bbbbbbbbbbbb", tenant="other"), revision()))[0] == DEFAULTS
    assert run(h.service.limits(None, revision()))[0] == DEFAULTS  # a public caller: the defaults


def test_a_functions_limits_override_the_callers(h: Harness) -> None:
    run(h.keys.set_tenant("acme", {"rps": 10, "daily": 1000}))
    limits, overridden = run(h.service.limits(key(tenant="acme", concurrency=2),
                                              revision(limits={"rps": 1, "concurrency": 9})))
    assert limits == Limits(rps=1, burst=200, concurrency=9, daily=1000)
    assert overridden == {"rps", "concurrency"}
    public, _ = run(h.service.limits(None, revision(limits={"daily": 3})))
    assert public == Limits(rps=100, burst=200, concurrency=50, daily=3)


def test_a_tenant_change_applies_to_the_next_invocation(h: Harness) -> None:
    principal, rev = key(tenant="acme"), revision()
    assert run(h.service.limits(principal, rev))[0].rps == 100
    run(h.keys.set_tenant("acme", {"rps": 2}))
    assert run(h.service.limits(principal, rev))[0].rps == 2


def test_a_rate_refusal_says_when_to_retry_and_every_answer_carries_ratelimit_headers(h: Harness) -> None:
    principal, rev = key(rps=0.5, burst=2), revision()

    async def scenario() -> list[tuple[Invocation, Refusal | None]]:
        return [await h.admit(principal, rev) for _ in range(3)]

    (first, ok1), (second, ok2), (third, refused) = run(scenario())
    assert ok1 is None and ok2 is None
    assert dict(first.headers)[b"x-ratelimit-remaining"] == b"1"
    assert dict(second.headers)[b"x-ratelimit-remaining"] == b"0"
    assert refused == Refusal("rate", "rate limit reached for API key 0123456789ab: 0.5 requests/s with bursts "
                                      "of 2", 2)
    headers = dict(third.headers)
    assert headers[b"ratelimit-policy"] == b'"default";q=2;w=4'
    assert headers[b"x-ratelimit-limit"] == b"2" and headers[b"x-ratelimit-remaining"] == b"0"
    assert third.subject == "0123456789ab" and third.limits == Limits(0.5, 2, 50, None)


def test_the_rate_refills_with_time(h: Harness) -> None:
    principal, rev = key(rps=1, burst=1), revision()
    assert run(h.outcomes(principal, rev, 2)) == ["ok", "rate"]
    h.clock.now += 1.0
    assert run(h.outcomes(principal, rev, 2)) == ["ok", "rate"]


def test_a_functions_own_limit_is_counted_per_key_and_function(h: Harness) -> None:
    limited_a, limited_b = revision("alpha", {"rps": 1, "burst": 1}), revision("beta", {"rps": 1, "burst": 1})
    one, two = key("aaaaaaaaaaaa"), key("bbbbbbbbbbbb")
    assert run(h.outcomes(one, limited_a, 2)) == ["ok", "rate"]
    assert run(h.outcomes(one, limited_b, 1)) == ["ok"]  # another function: its own bucket
    assert run(h.outcomes(two, limited_a, 1)) == ["ok"]  # another key: its own bucket


def test_a_keys_own_rate_is_shared_by_the_functions_without_limits(h: Harness) -> None:
    principal = key(rps=1, burst=1)
    assert run(h.outcomes(principal, revision("alpha"), 1)) == ["ok"]
    assert run(h.outcomes(principal, revision("beta"), 1)) == ["rate"]


def test_public_callers_are_counted_per_address(h: Harness) -> None:
    rev = revision(limits={"rps": 1, "burst": 1})

    async def scenario() -> list[Refusal | None]:
        return [(await h.admit(None, rev, client))[1] for client in ("10.0.0.1", "10.0.0.1", "10.0.0.2")]

    first, again, other = run(scenario())
    assert first is None and other is None
    assert again is not None and again.limit == "rate"
    assert again.message.startswith("rate limit reached for client 10.0.0.1:")


def test_a_concurrency_slot_is_held_until_release(h: Harness) -> None:
    principal, rev = key(concurrency=2), revision()

    async def scenario() -> None:
        first, ok1 = await h.admit(principal, rev)
        second, ok2 = await h.admit(principal, rev)
        third, refused = await h.admit(principal, rev)
        assert ok1 is None and ok2 is None and first.slot is not None
        assert refused == Refusal("concurrency", "concurrency limit reached for API key 0123456789ab: 2 requests "
                                                 "in flight", 1)
        await h.service.release(third)  # a refused invocation holds no slot: nothing given back
        assert (await h.admit(principal, rev))[1] is not None
        await h.service.release(first)
        assert first.slot is None
        await h.service.release(first)  # twice gives back one slot only
        fourth, ok4 = await h.admit(principal, rev)
        assert ok4 is None
        assert (await h.admit(principal, rev))[1] is not None
        for invocation in (second, fourth):
            await h.service.release(invocation)
        assert [(await h.admit(principal, rev))[1] for _ in range(2)] == [None, None]

    run(scenario())


def test_the_daily_quota_refuses_until_utc_midnight(h: Harness) -> None:
    principal, rev = key(daily=2), revision()
    h.clock.now = MIDNIGHT + 86400 - 999.5  # 999.5 s before the next UTC midnight: retry in 1000 s

    async def scenario() -> list[Refusal | None]:
        return [(await h.admit(principal, rev))[1] for _ in range(3)]

    assert run(scenario())[:2] == [None, None]
    refused = run(scenario())[0]
    assert refused == Refusal("daily", "daily limit reached for API key 0123456789ab: 2 requests per UTC day", 1000)
    h.clock.now = MIDNIGHT + 86400  # a new day, a new quota
    assert run(scenario()) == [None, None, Refusal("daily", refused.message, 86400)]


def test_daily_counts_reach_the_store_on_flush(h: Harness) -> None:
    principal, rev = key(daily=10), revision(limits={"daily": 5})
    assert run(h.outcomes(principal, rev, 3)) == ["ok"] * 3
    h.service.flush()
    assert h.state.daily_count("0123456789ab|sentiment", utc_day(h.clock.now)) == 3  # per key × function


def test_a_rate_refusal_costs_no_daily_quota(h: Harness) -> None:
    principal, rev = key(rps=1, burst=1, daily=3), revision()
    assert run(h.outcomes(principal, rev, 5)) == ["ok", "rate", "rate", "rate", "rate"]
    seen = []
    for _ in range(3):
        h.clock.now += 1.0
        seen += run(h.outcomes(principal, rev, 1))
    assert seen == ["ok", "ok", "daily"]  # 3 a day: the first call and two more; the refusals cost none


def test_a_concurrency_refusal_costs_no_daily_quota_and_a_daily_refusal_keeps_no_slot(h: Harness) -> None:
    principal, rev = key(concurrency=1, daily=2), revision()

    async def scenario() -> list[str]:
        held, ok = await h.admit(principal, rev)
        assert ok is None
        seen = []
        for _ in range(3):
            invocation, refused = await h.admit(principal, rev)
            seen.append(refused.limit if refused else "ok")
            await h.service.release(invocation)
        await h.service.release(held)
        for _ in range(2):  # the second is refused for the day; release() must give its slot back
            invocation, refused = await h.admit(principal, rev)
            seen.append(refused.limit if refused else "ok")
            await h.service.release(invocation)
        return seen

    assert run(scenario()) == ["concurrency"] * 3 + ["ok", "daily"]
    assert run(h.outcomes(principal, rev, 1)) == ["daily"]  # not "concurrency": no slot leaked


def test_no_limits_set_admits_everything(tmp_path: Path) -> None:
    h = Harness(tmp_path, Limits())
    invocation, refused = run(h.admit(key(), revision()))
    assert refused is None and invocation.headers == [] and invocation.slot is None
    assert run(h.outcomes(key(), revision(), 1000)) == ["ok"] * 1000
