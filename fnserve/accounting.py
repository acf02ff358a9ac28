"""Accounting arithmetic, pure: what one request costs in the usage ledger, and which UTC day it falls on.

A ``Tally`` is what the ledger keeps per key × function × day: requests, client errors (4xx, limits
included), server errors (5xx), total router time, predictor time (the upstream hop) and a latency
histogram with buckets 10% apart, so p95 is known within 10% without storing each request — and, for
generative functions, the prompt and completion tokens the replica reported. Nothing here
does I/O; the router's accounting service aggregates tallies and the state store merges them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

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
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, status: int, ms: float, predictor_ms: float, prompt_tokens: int = 0,
            completion_tokens: int = 0) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
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
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
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
                           "predictor_ms": self.predictor_ms, "histogram": self.histogram,
                           "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens})

    @classmethod
    def from_json(cls, text: str) -> Tally:
        data = json.loads(text)
        data["histogram"] = {int(k): v for k, v in data["histogram"].items()}
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "clientErrors": self.client_errors, "serverErrors": self.server_errors,
                "totalMs": round(self.total_ms, 1), "predictorMs": round(self.predictor_ms, 1),
                "meanMs": round(self.total_ms / self.requests, 2) if self.requests else 0.0,
                "p95Ms": self.percentile_ms(0.95), "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens}


_last_day: tuple[int, str] = (-1, "")


def utc_day(now: float) -> str:
    """``YYYY-MM-DD`` (UTC) of a timestamp; formatted once per day, since every request asks."""
    global _last_day
    number = int(now // 86400)
    if number != _last_day[0]:
        _last_day = (number, datetime.fromtimestamp(number * 86400, timezone.utc).strftime("%Y-%m-%d"))
    return _last_day[1]


def seconds_to_midnight(now: float) -> float:
    return 86400 - now % 86400
