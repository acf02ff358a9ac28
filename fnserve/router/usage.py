"""The usage ledger: per key × function × UTC day, what was asked and what it cost.

Requests, client errors (4xx, limits included), server errors (5xx), total router time, predictor time
(the upstream hop) and a latency histogram with buckets 10% apart, so p95 is known within 10% without
storing each request. Aggregated in memory and merged into SQLite every second and at shutdown.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from fnserve.router.quota import utc_day
from fnserve.state import StateStore

_GROWTH = 1.1


def bucket_of(ms: float) -> int:
    return 0 if ms <= 1 else math.ceil(math.log(ms) / math.log(_GROWTH))


def bucket_upper_ms(index: int) -> float:
    return _GROWTH ** index


@dataclass
class Tally:
    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    total_ms: float = 0.0
    predictor_ms: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    def add(self, status: int, ms: float, predictor_ms: float) -> None:
        self.requests += 1
        self.client_errors += 400 <= status < 500
        self.server_errors += status >= 500
        self.total_ms += ms
        self.predictor_ms += predictor_ms
        index = bucket_of(ms)
        self.histogram[index] = self.histogram.get(index, 0) + 1

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.client_errors += other.client_errors
        self.server_errors += other.server_errors
        self.total_ms += other.total_ms
        self.predictor_ms += other.predictor_ms
        for index, count in other.histogram.items():
            self.histogram[index] = self.histogram.get(index, 0) + count

    def percentile_ms(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (within 10% of the true value)."""
        target, seen = q * self.requests, 0
        for index in sorted(self.histogram):
            seen += self.histogram[index]
            if seen >= target:
                return round(bucket_upper_ms(index), 2)
        return 0.0

    def to_json(self) -> str:
        return json.dumps({"requests": self.requests, "client_errors": self.client_errors,
                           "server_errors": self.server_errors, "total_ms": self.total_ms,
                           "predictor_ms": self.predictor_ms, "histogram": self.histogram})

    @classmethod
    def from_json(cls, text: str) -> Tally:
        data = json.loads(text)
        data["histogram"] = {int(k): v for k, v in data["histogram"].items()}
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "clientErrors": self.client_errors, "serverErrors": self.server_errors,
                "totalMs": round(self.total_ms, 1), "predictorMs": round(self.predictor_ms, 1),
                "meanMs": round(self.total_ms / self.requests, 2) if self.requests else 0.0,
                "p95Ms": self.percentile_ms(0.95)}


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
