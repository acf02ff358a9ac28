"""Admission: the limits that apply to one invocation, checked before it reaches a replica, and the
usage it leaves behind. Pure ASGI, placed after AuthMiddleware, which has named the caller.

Order: rate, then concurrency, then the daily quota, so a request refused for rate costs no daily
quota. Refusals are 429 with Retry-After, the limit that was hit and the key id; every response of a
rate-limited caller carries the RateLimit headers.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnserve.accounting import seconds_to_midnight
from fnserve.router.auth import classify
from fnserve.router.errors import error_response
from fnserve.router.quota import Limits, rate_headers


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, platform: Any) -> None:
        self.app = app
        self.platform = platform
        self._resolved: dict[tuple[str | None, str, int], tuple[Limits, frozenset[str]]] = {}

    async def _limits(self, principal: Any, revision: Any) -> tuple[Limits, frozenset[str]]:
        """Effective limits, and which fields the function overrides (counted per key × function);
        resolved once per key and revision while the tenants' limits are unchanged."""
        tenants = await self.platform.tenant_limits()
        cache_key = (principal.key_id if principal is not None else None, revision.id,
                     self.platform.tenant_generation)
        cached = self._resolved.get(cache_key)
        if cached is not None:
            return cached
        spec = revision.function.spec.limits
        function_limits = Limits(**spec.model_dump()) if spec else Limits()
        base = self.platform.default_limits
        if principal is not None:
            base = Limits(**principal.limits).over(tenants.get(principal.tenant, Limits()).over(base))
        overridden = frozenset(f.name for f in fields(Limits) if getattr(function_limits, f.name) is not None)
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[cache_key] = (function_limits.over(base), overridden)
        return self._resolved[cache_key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, function = classify(scope["path"]) if scope["type"] == "http" else ("open", None)
        revision = self.platform.functions.get(function) if kind == "invoke" else None
        if revision is None:
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        client = scope.get("client") or ("unknown", 0)
        subject = principal.key_id if principal is not None else f"ip:{client[0]}"
        limits, per_function = await self._limits(principal, revision)

        def scoped(name: str) -> str:
            return f"{subject}|{function}" if name in per_function else subject

        started, now = time.perf_counter(), time.time()
        store, headers, holding = self.platform.quota_store, [], None
        refusal: tuple[str, str, int] | None = None
        if limits.rps:
            result = await store.rate(scoped("rps"), limits.rps, limits.effective_burst)
            headers = rate_headers(limits, result)
            if not result.allowed:
                refusal = ("rate", f"{limits.rps:g} requests/s with bursts of {limits.effective_burst}",
                           max(1, math.ceil(result.retry_after)))
        if refusal is None and limits.concurrency:
            holding = await store.acquire(scoped("concurrency"), limits.concurrency)
            if holding is None:
                refusal = ("concurrency", f"{limits.concurrency} requests in flight", 1)
        if refusal is None and limits.daily:
            allowed, _ = await self.platform.daily.take(scoped("daily"), limits.daily, now)
            if not allowed:
                refusal = ("daily", f"{limits.daily} requests per UTC day", math.ceil(seconds_to_midnight(now)))

        status = 500
        try:
            if refusal is not None:
                limit, description, retry_after = refusal
                who = f"API key {principal.key_id}" if principal is not None else f"client {client[0]}"
                response = error_response(Request(scope), 429, f"{limit} limit reached for {who}: {description}",
                                          retry_after=retry_after, limit=limit,
                                          **({"keyId": principal.key_id} if principal is not None else {}))
                response.raw_headers.extend(headers)
                status = 429
                await response(scope, receive, send)
                return

            async def send_with_headers(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = list(message.get("headers", [])) + headers
                await send(message)

            await self.app(scope, receive, send_with_headers)
        finally:
            if holding is not None:
                await store.release(scoped("concurrency"), holding)
            elapsed_ms = (time.perf_counter() - started) * 1000
            upstream_ms = scope.get("state", {}).get("upstream_ms", 0.0)
            self.platform.usage.record(principal.key_id if principal is not None else "public", function or "",
                                       status, elapsed_ms, upstream_ms, now)
