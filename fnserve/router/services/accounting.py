"""Accounting: what each invocation cost, recorded once when it ends — in the usage ledger (per key ×
function × UTC day, merged into the state store every second and at shutdown) and in the Prometheus
metrics. The arithmetic of a tally is in fnserve/accounting.py; this keeps the running totals.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fnserve.accounting import Tally, utc_day
from fnserve.router.invocation import Invocation
from fnserve.router.live_stats import LiveStats
from fnserve.router.metrics import Metrics
from fnserve.router.redis_counters import RedisUsage
from fnserve.state import StateStore


class UsageLedger:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._pending: dict[tuple[str, str, str], Tally] = {}
        self._lock = threading.Lock()

    def record(self, key_id: str, function: str, status: int, ms: float, predictor_ms: float, now: float,
               prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        row = (key_id, function, utc_day(now))
        with self._lock:
            tally = self._pending.get(row)
            if tally is None:
                tally = self._pending[row] = Tally()
            tally.add(status, ms, predictor_ms, prompt_tokens, completion_tokens)

    def flush(self) -> None:
        """Merge what was recorded since the last flush into the database (blocking: a worker thread)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            self.state.merge_usage(pending)
        except Exception:  # the database is down: keep the tallies for the next flush
            with self._lock:
                for row, tally in pending.items():
                    self._pending.setdefault(row, Tally()).merge(tally)
            raise


class AccountingService:
    """``shared``: the usage ledger in Redis (router/redis_counters.py), recorded before an answer's
    last byte, so a router that dies loses nothing a client saw; else this router's ledger, merged into
    the database every second (a router killed loses at most that second)."""

    def __init__(self, state: StateStore, metrics: Metrics, shared: RedisUsage | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self.ledger = UsageLedger(state)
        self.shared = shared
        self.by_revision: dict[tuple[str, int], Tally] = {}
        """Requests, errors and latency per function × revision seen by this router since it started (what
        `fnserve status` compares during a canary rollout)."""
        self.live = LiveStats()
        """The last hour in 10-second buckets per function (the console's list and charts)."""

    def revision_summary(self, function: str, number: int) -> dict[str, Any]:
        tally = self.by_revision.get((function, number), Tally())
        summary = tally.summary()
        return {"requests": summary["requests"], "errors": summary["serverErrors"],
                "clientErrors": summary["clientErrors"], "meanMs": summary["meanMs"], "p95Ms": summary["p95Ms"]}

    async def record(self, invocation: Invocation) -> None:
        """The one place an invocation is counted: metrics and the ledger alike."""
        elapsed_ms = invocation.elapsed_ms()
        revision = invocation.revision.number if invocation.revision is not None else None
        self.metrics.observe(invocation.function, revision, invocation.status, elapsed_ms / 1000,
                             invocation.cold_start_ms)
        if invocation.ttft_ms is not None or invocation.metered:
            self.metrics.observe_stream(invocation.function, invocation.ttft_ms, invocation.chunk_gaps_ms,
                                        invocation.prompt_tokens, invocation.completion_tokens)
        if invocation.revision is not None:
            which = (invocation.function, invocation.revision.number)
            tally = self.by_revision.get(which)
            if tally is None:
                tally = self.by_revision[which] = Tally()
            tally.add(invocation.status, elapsed_ms, invocation.upstream_ms)
            self.live.record(invocation.function, invocation.status, elapsed_ms, invocation.cold_start_first)
        row = (invocation.key_id, invocation.function, invocation.status, elapsed_ms, invocation.upstream_ms,
               invocation.now, invocation.prompt_tokens, invocation.completion_tokens)
        if self.shared is not None:
            await self.shared.record(*row)
        else:
            self.ledger.record(*row)

    def flush(self) -> None:
        """Persist the ledger (blocking: a worker thread, or at shutdown)."""
        self.ledger.flush()
        if self.shared is not None:
            self.shared.merge()

    async def usage(self, key_id: str | None, function: str | None, since: str | None,
                    latest: bool = True) -> list[dict[str, Any]]:
        """The ledger's rows, with ``latest`` this router's counts of the last second included (a write to
        the store first: an admin's read, not a poll any key may make as often as it likes)."""
        if latest:
            await asyncio.to_thread(self.flush)
        rows = await asyncio.to_thread(self.state.usage, key_id, function, since)
        return [{"keyId": key, "function": name, "day": day, **Tally.from_json(tally).summary()}
                for key, name, day, tally in rows]
