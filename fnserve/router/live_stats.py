"""Live per-function statistics for the console: a bounded ring of 10-second buckets per function, the
last hour of them, kept in the router's memory — no Prometheus or Grafana needed to see a function's
rate and latency.

Each bucket is a Tally (fnserve/accounting.py: counts and a latency histogram 10% apart), so any window
of buckets merges into exact counts and percentiles within 10%. Only buckets that saw a request exist:
an idle function costs one empty deque, and a poll of a thousand idle functions costs a thousand
look-ups. These are this router's numbers since it started (several routers each count their own), as
`fnserve status` shows them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fnserve.accounting import Tally

INTERVAL = 10
"""Seconds a bucket spans."""
HISTORY = 360
"""Buckets kept: an hour."""
IDLE: dict[str, Any] = {"rpm": 0, "p50Ms": None, "p95Ms": None, "requests": 0, "errors": 0, "coldStarts": 0}
"""The summary of a function without a request in the last hour."""


@dataclass
class Bucket:
    start: int
    """Unix seconds at which the bucket begins (a multiple of INTERVAL)."""
    tally: Tally = field(default_factory=Tally)
    cold_starts: int = 0


class LiveStats:
    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._rings: dict[str, deque[Bucket]] = {}
        self._summaries: dict[str, tuple[int, int, int, dict[str, Any]]] = {}
        """Each function's windows as of the bucket they were made in (its start, the minute's whole
        buckets' requests, the sixth bucket's, the rest of the summary): they change only when a request is
        recorded or a bucket boundary passes, so a console polling every two seconds merges a function's
        histograms at most once per ten seconds while it gets no requests, however many functions there are."""

    def record(self, function: str, status: int, ms: float, cold: bool) -> None:
        """One finished invocation (on the request path: a dict look-up and a histogram add)."""
        start = int(self.clock()) // INTERVAL * INTERVAL
        ring = self._rings.get(function)
        if ring is None:
            ring = self._rings[function] = deque(maxlen=HISTORY)
        if not ring or ring[-1].start != start:
            ring.append(Bucket(start))
        bucket = ring[-1]
        bucket.tally.add(status, ms, 0.0)
        bucket.cold_starts += cold
        self._summaries.pop(function, None)

    def forget(self, function: str) -> None:
        self._rings.pop(function, None)
        self._summaries.pop(function, None)

    @staticmethod
    def _since(ring: deque[Bucket], seconds: int, current: int) -> list[Bucket]:
        """The buckets of the window of ``seconds`` that ends with the one beginning at ``current``: that
        bucket (under way) and the ones before it, newest first."""
        found = []
        for bucket in reversed(ring):
            if bucket.start <= current - seconds:
                break
            found.append(bucket)
        return found

    def summary(self, function: str) -> dict[str, Any]:
        """What the functions list shows: requests per minute (a sliding minute: the current bucket, the
        five before it and the part of the sixth the minute still covers), p50 and p95 over the last 5
        minutes (None without requests), and the last hour's requests, server errors and cold starts."""
        now = self.clock()
        current = int(now) // INTERVAL * INTERVAL
        cached = self._summaries.get(function)
        if cached is None or cached[0] != current:
            ring = self._rings.get(function)
            if not ring or ring[-1].start + INTERVAL <= now - 3600:
                return IDLE
            hour = self._since(ring, 3600, current)  # counts only: no histogram is merged for the hour
            recent = Tally()
            for bucket in self._since(ring, 300, current):
                recent.merge(bucket.tally)
            whole = sum(b.tally.requests for b in hour if b.start > current - 60)
            edge = next((b.tally.requests for b in hour if b.start == current - 60), 0)
            cached = self._summaries[function] = (current, whole, edge, {
                "p50Ms": recent.percentile_ms(0.5) if recent.requests else None,
                "p95Ms": recent.percentile_ms(0.95) if recent.requests else None,
                "requests": sum(b.tally.requests for b in hour), "errors": sum(b.tally.server_errors for b in hour),
                "coldStarts": sum(b.cold_starts for b in hour)})
        _, whole, edge, rest = cached
        return {"rpm": round(whole + edge * (1 - (now - current) / INTERVAL)), **rest}

    def series(self, function: str) -> list[dict[str, Any]]:
        """The last hour as HISTORY buckets, oldest first, the empty ones included (a chart's x axis)."""
        now = int(self.clock()) // INTERVAL * INTERVAL
        first = now - (HISTORY - 1) * INTERVAL
        by_start = {b.start: b for b in self._rings.get(function, ()) if b.start >= first}
        out: list[dict[str, Any]] = []
        for start in range(first, now + INTERVAL, INTERVAL):
            bucket = by_start.get(start)
            if bucket is None:
                out.append({"t": start, "requests": 0, "errors": 0, "clientErrors": 0, "p50Ms": None, "p95Ms": None,
                            "coldStarts": 0})
                continue
            tally = bucket.tally
            out.append({"t": start, "requests": tally.requests, "errors": tally.server_errors,
                        "clientErrors": tally.client_errors, "p50Ms": tally.percentile_ms(0.5),
                        "p95Ms": tally.percentile_ms(0.95), "coldStarts": bucket.cold_starts})
        return out
