"""The usage ledger: per key × function × UTC day, what was asked and what it cost.

Requests, client errors (4xx, limits included), server errors (5xx), total router time, predictor time
(the upstream hop) and a latency histogram with buckets 10% apart, so p95 is known within 10% without
storing each request. Aggregated in memory and merged into SQLite every second and at shutdown.
"""

from __future__ import annotations

import threading

from fnserve.accounting import Tally, utc_day
from fnserve.state import StateStore


class UsageLedger:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._pending: dict[tuple[str, str, str], Tally] = {}
        self._lock = threading.Lock()

    def record(self, key_id: str, function: str, status: int, ms: float, predictor_ms: float, now: float) -> None:
        row = (key_id, function, utc_day(now))
        with self._lock:
            tally = self._pending.get(row)
            if tally is None:
                tally = self._pending[row] = Tally()
            tally.add(status, ms, predictor_ms)

    def flush(self) -> None:
        """Merge what was recorded since the last flush into SQLite (blocking: a worker thread)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.state.merge_usage(pending)
