"""The SLO gate: thresholds a load test must meet, checked against its final statistics.

Pure data in, verdict out (no Locust import), so locustfile.py's ``quitting`` listener, ``make
loadtest`` and the tests all read the same rules:

- ``max_fail_ratio``: failures / requests over the whole run (429s are not failures: the locustfile
  counts them as expected outcomes under their own name).
- ``p95``: milliseconds, per request name (``"V1 predict=150,V2 infer=200"``); a bare number is the
  default for every name not listed, except the ``cold start`` and ``429`` rows, which only a threshold
  naming them checks — a cold start is slow by nature and a 429 is fast by nature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLD_SUFFIX, THROTTLED_SUFFIX = " cold start", " 429"


@dataclass(frozen=True)
class Slo:
    max_fail_ratio: float = 0.0
    p95_default: float | None = None
    p95: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, fail_ratio: float | str, p95: str) -> Slo:
        """From option strings; a ValueError names what is wrong with them."""
        ratio = float(fail_ratio)
        if not 0 <= ratio <= 1:
            raise ValueError(f"the failure ratio must be between 0 and 1 (got {fail_ratio})")
        default, named = None, {}
        for part in filter(None, (p.strip() for p in p95.split(","))):
            name, sep, value = part.rpartition("=")
            try:
                ms = float(value)
            except ValueError:
                raise ValueError(f"p95 threshold {part!r}: expected NAME=MILLISECONDS or MILLISECONDS") from None
            if sep:
                named[name.strip()] = ms
            else:
                default = ms
        return cls(ratio, default, named)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    lines: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "lines": self.lines}


def check(slo: Slo, entries: dict[str, dict[str, float]], total_requests: int, total_failures: int) -> Verdict:
    """``entries``: request name → {"requests", "failures", "p95"} (ms). One line per rule checked."""
    lines, passed = [], True
    ratio = total_failures / total_requests if total_requests else 0.0
    ok = total_requests > 0 and ratio <= slo.max_fail_ratio
    passed &= ok
    lines.append(f"{'PASS' if ok else 'FAIL'} failure ratio {ratio:.2%} (max {slo.max_fail_ratio:.2%}) over "
                 f"{total_requests} requests" + ("" if total_requests else ": nothing was requested"))
    for name in sorted(set(entries) | set(slo.p95)):
        limit = slo.p95.get(name)
        if limit is None and not name.endswith((COLD_SUFFIX, THROTTLED_SUFFIX)):
            limit = slo.p95_default
        if limit is None:
            continue
        entry = entries.get(name)
        if entry is None or not entry["requests"]:
            lines.append(f"SKIP p95 {name}: no requests of that name")
            continue
        ok = entry["p95"] <= limit
        passed &= ok
        lines.append(f"{'PASS' if ok else 'FAIL'} p95 {name}: {entry['p95']:.0f} ms (max {limit:g} ms)")
    return Verdict(passed, lines)
