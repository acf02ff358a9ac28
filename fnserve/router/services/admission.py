"""Admission: the limits that apply to one invocation, checked before it reaches a replica, and the
concurrency slot it holds until it ends.

Resolution: a key's own value, else its tenant's default, else the global default (FNSERVE_DEFAULT_*);
a function's ``spec.limits`` overrides a field for calls to that function, counted per key × function.
Public functions are limited per client address with the function's or the global values.

Order: rate, then concurrency, then the daily quota, then tokens, so a request refused for rate costs
no daily quota. A refusal says which limit, with Retry-After; every answer to a rate-limited caller
carries the RateLimit headers (put on the invocation, which the answer's writer adds).

Tokens (``tpm``, ``tpd``) apply to token-metered requests (generative and embedding routes): admission
reserves what the request may produce — its max_tokens — in both buckets, and :meth:`release` settles
each reservation to the real count (prompt + completion) when the answer ends, refunding or charging
the difference. A request whose max_tokens alone exceeds the tpm cannot ever pass: that is a 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from fnserve.accounting import seconds_to_midnight, utc_day
from fnserve.records import KeyRecord, Revision
from fnserve.router.invocation import Invocation, Principal, Reservation
from fnserve.router.quota import DailyCounters, Limits, RateResult, Store, rate_headers, token_headers
from fnserve.router.services.keys import KeyService


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str
    """rate | concurrency | daily | tpm | tpd"""
    message: str
    retry_after: int | None
    status: int = 429


class AdmissionService:
    def __init__(self, keys: KeyService, store: Store, daily: DailyCounters, defaults: Limits) -> None:
        self.keys = keys
        self.store = store
        self.daily = daily
        self.defaults = defaults
        self._resolved: dict[tuple[str | None, str, int], tuple[Limits, frozenset[str]]] = {}

    async def limits(self, principal: Principal | None, revision: Revision) -> tuple[Limits, frozenset[str]]:
        """Effective limits, and which fields the function overrides (counted per key × function);
        resolved once per key and revision while the tenants' limits are unchanged."""
        tenants = await self.keys.tenant_limits()
        cache_key = (principal.key_id if principal is not None else None, revision.id, self.keys.tenant_generation)
        cached = self._resolved.get(cache_key)
        if cached is not None:
            return cached
        spec = revision.function.spec.limits
        function_limits = Limits(**spec.model_dump()) if spec else Limits()
        base = self._key_limits(principal.limits, principal.tenant, tenants) if principal is not None else self.defaults
        overridden = frozenset(f.name for f in fields(Limits) if getattr(function_limits, f.name) is not None)
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[cache_key] = (function_limits.over(base), overridden)
        return self._resolved[cache_key]

    def _key_limits(self, own: dict[str, Any], tenant: str, tenants: dict[str, Limits]) -> Limits:
        """A key's own limits over its tenant's over the global defaults."""
        return Limits(**own).over(tenants.get(tenant, Limits()).over(self.defaults))

    async def admit(self, invocation: Invocation, client: str) -> Refusal | None:
        """Check and take the invocation's limits; a refusal says which one it hit."""
        assert invocation.revision is not None
        principal = invocation.principal
        subject = invocation.subject = principal.key_id if principal is not None else f"ip:{client}"
        limits, per_function = await self.limits(principal, invocation.revision)
        invocation.limits = limits
        function = invocation.function

        def scoped(name: str) -> str:
            return f"{subject}|{function}" if name in per_function else subject

        who = f"API key {principal.key_id}" if principal is not None else f"client {client}"
        if limits.rps:
            result = await self.store.rate(scoped("rps"), limits.rps, limits.effective_burst)
            invocation.headers.extend(rate_headers(limits, result))
            if not result.allowed:
                return Refusal("rate", f"rate limit reached for {who}: {limits.rps:g} requests/s with bursts of "
                                       f"{limits.effective_burst}", max(1, math.ceil(result.retry_after)))
        if limits.concurrency:
            name = scoped("concurrency")
            token = await self.store.acquire(name, limits.concurrency)
            if token is None:
                return Refusal("concurrency", f"concurrency limit reached for {who}: {limits.concurrency} "
                                              f"requests in flight", 1)
            invocation.slot = (name, token)
        if limits.daily:
            allowed, _ = await self.daily.take(scoped("daily"), limits.daily, invocation.now)
            if not allowed:
                return Refusal("daily", f"daily limit reached for {who}: {limits.daily} requests per UTC day",
                               math.ceil(seconds_to_midnight(invocation.now)))
        if invocation.metered and (limits.tpm or limits.tpd):
            return await self._reserve_tokens(invocation, limits, scoped("tpm"), scoped("tpd"), who)
        return None

    async def _reserve_tokens(self, invocation: Invocation, limits: Limits, tpm_subject: str, tpd_subject: str,
                              who: str) -> Refusal | None:
        """Reserve the invocation's max_tokens in its token buckets (settled by release)."""
        cost = invocation.max_tokens
        if limits.tpm:
            if cost > limits.tpm:
                return Refusal("tpm", f"max_tokens {cost} is more than {who} may use in a minute ({limits.tpm} "
                                      f"tokens per minute): ask for fewer", None, 400)
            subject, rate = f"{tpm_subject}|tokens", limits.tpm / 60
            result = await self.store.rate(subject, rate, limits.tpm, cost)
            invocation.headers.extend(token_headers("tokens", limits.tpm, 60, result))
            if not result.allowed:
                return Refusal("tpm", f"token limit reached for {who}: {limits.tpm} tokens per minute (this request "
                                      f"reserves {cost}, its max_tokens)", max(1, math.ceil(result.retry_after)))
            invocation.reservations.append(Reservation("tpm", subject, rate, cost))
        if limits.tpd:
            subject, day = f"{tpd_subject}|tokens", utc_day(invocation.now)
            allowed, remaining = await self.daily.take(subject, limits.tpd, invocation.now, cost)
            midnight = seconds_to_midnight(invocation.now)
            invocation.headers.extend(token_headers("tokens-daily", limits.tpd, 86400,
                                                    RateResult(allowed, 0.0, remaining, midnight, 0.0)))
            if not allowed:
                return Refusal("tpd", f"daily token limit reached for {who}: {limits.tpd} tokens per UTC day "
                                      f"({remaining} left, this request reserves {cost})", math.ceil(midnight))
            invocation.reservations.append(Reservation("tpd", subject, day, cost))
        return None

    async def release(self, invocation: Invocation) -> None:
        """The invocation has ended: give back its concurrency slot, settle its token reservations."""
        if invocation.slot is not None:
            (name, token), invocation.slot = invocation.slot, None
            await self.store.release(name, token)
        if invocation.reservations:
            used = invocation.prompt_tokens + invocation.completion_tokens
            reservations, invocation.reservations = invocation.reservations, []
            for reservation in reservations:
                if reservation.limit == "tpm":
                    assert isinstance(reservation.where, float)
                    await self.store.adjust(reservation.subject, reservation.where, used - reservation.tokens)
                else:
                    assert isinstance(reservation.where, str)
                    await self.daily.add(reservation.subject, reservation.where, used - reservation.tokens)

    async def quota(self, key: KeyRecord, revisions: list[Revision], now: float) -> dict[str, Any]:
        """A key's limits as they apply to it (its own over its tenant's over the defaults) and what it
        has used today of each daily one: a bar per limit, and one per function of ``revisions`` whose
        manifest sets its own daily limit for the key (counted apart, per key × function)."""
        limits = self._key_limits(key.limits, key.tenant, await self.keys.tenant_limits())
        bars = await self._bars(key.id, limits, None, now)
        for revision in revisions:
            spec = revision.function.spec.limits
            if spec is not None and (spec.daily or spec.tpd):
                own = Limits(daily=spec.daily, tpd=spec.tpd)
                bars += await self._bars(f"{key.id}|{revision.name}", own, revision.name, now)
        return {"limits": limits.to_dict(), "day": utc_day(now), "bars": bars}

    async def _bars(self, subject: str, limits: Limits, function: str | None, now: float) -> list[dict[str, Any]]:
        bars = []
        for name, counted, unit in (("daily", subject, "requests"), ("tpd", f"{subject}|tokens", "tokens")):
            limit = getattr(limits, name)
            if limit:
                bars.append({"limit": name, "function": function, "used": await self.daily.used(counted, now),
                             "of": limit, "unit": unit})
        return bars

    def flush(self) -> None:
        """Persist the daily counts (blocking: a worker thread, or at shutdown)."""
        self.daily.flush()

    async def close(self) -> None:
        await self.store.close()
