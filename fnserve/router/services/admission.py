"""Admission: the limits that apply to one invocation, checked before it reaches a replica, and the
concurrency slot it holds until it ends.

Resolution: a key's own value, else its tenant's default, else the global default (FNSERVE_DEFAULT_*);
a function's ``spec.limits`` overrides a field for calls to that function, counted per key × function.
Public functions are limited per client address with the function's or the global values.

Order: rate, then concurrency, then the daily quota, so a request refused for rate costs no daily
quota. A refusal says which limit, with Retry-After; every answer to a rate-limited caller carries the
RateLimit headers (put on the invocation, which the answer's writer adds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from fnserve.accounting import seconds_to_midnight
from fnserve.records import Revision
from fnserve.router.invocation import Invocation, Principal
from fnserve.router.quota import DailyCounters, Limits, Store, rate_headers
from fnserve.router.services.keys import KeyService


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str
    """rate | concurrency | daily"""
    message: str
    retry_after: int


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
        base = self.defaults
        if principal is not None:
            base = Limits(**principal.limits).over(tenants.get(principal.tenant, Limits()).over(base))
        overridden = frozenset(f.name for f in fields(Limits) if getattr(function_limits, f.name) is not None)
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[cache_key] = (function_limits.over(base), overridden)
        return self._resolved[cache_key]

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
        return None

    async def release(self, invocation: Invocation) -> None:
        """The invocation has ended: give back its concurrency slot."""
        if invocation.slot is not None:
            (name, token), invocation.slot = invocation.slot, None
            await self.store.release(name, token)

    def flush(self) -> None:
        """Persist the daily counts (blocking: a worker thread, or at shutdown)."""
        self.daily.flush()

    async def close(self) -> None:
        await self.store.close()
