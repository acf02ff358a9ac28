"""Load shapes and the SLO gate as plain functions (Locust itself never runs inside pytest)."""

from __future__ import annotations

import pytest

from loadtests.shapes import ShapeParams, idle_gap, shape, spike, steady, step
from loadtests.slo import Slo, check

P = ShapeParams(users=8, spawn_rate=2, duration=100, steps=4, burst=10, idle_gap=50)


def test_steady_holds_then_stops() -> None:
    assert steady(P, 0) == (8, 2) and steady(P, 99.9) == (8, 2) and steady(P, 100) is None


def test_step_ramps_in_equal_stages_to_the_target() -> None:
    assert [step(P, t)[0] for t in (0, 24, 25, 50, 75, 99)] == [2, 2, 4, 6, 8, 8]
    assert step(P, 100) is None


def test_spike_jumps_at_once_and_comes_back() -> None:
    users = [spike(P, t)[0] for t in (0, 39, 40, 59, 60, 99)]
    assert users == [2, 2, 8, 8, 2, 2]
    assert spike(P, 40)[1] >= 8  # all spike users arrive within a second


def test_idle_gap_bursts_are_separated_by_silences_longer_than_scale_to_zero() -> None:
    assert [idle_gap(P, t)[0] for t in (0, 9, 10, 59, 60, 69, 70)] == [8, 8, 0, 0, 8, 8, 0]
    assert P.idle_gap > 40  # the sentiment example scales to zero after 30 s window + 10 s grace


def test_unknown_shape_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: steady, step, spike, idle-gap"):
        shape("ramp")


ENTRIES = {"V1 predict": {"requests": 100, "failures": 1, "p95": 40.0},
           "V1 predict cold start": {"requests": 2, "failures": 0, "p95": 900.0},
           "V1 predict 429": {"requests": 30, "failures": 0, "p95": 1.0},
           "V2 infer": {"requests": 100, "failures": 0, "p95": 60.0}}


def test_a_bare_p95_applies_to_warm_rows_only() -> None:
    verdict = check(Slo.parse("0.01", "50"), ENTRIES, 232, 1)
    assert not verdict.passed
    assert "PASS failure ratio 0.43% (max 1.00%) over 232 requests" in verdict.lines
    assert "PASS p95 V1 predict: 40 ms (max 50 ms)" in verdict.lines
    assert "FAIL p95 V2 infer: 60 ms (max 50 ms)" in verdict.lines
    assert not any("cold start" in line or "429" in line for line in verdict.lines)


def test_named_thresholds_and_the_failure_ratio() -> None:
    slo = Slo.parse("0", "V2 infer=100,V1 predict cold start=1000")
    verdict = check(slo, ENTRIES, 232, 1)
    assert not verdict.passed and verdict.lines[0].startswith("FAIL failure ratio")
    assert "PASS p95 V1 predict cold start: 900 ms (max 1000 ms)" in verdict.lines
    assert check(slo, ENTRIES, 232, 0).passed


def test_a_run_that_requested_nothing_fails() -> None:
    assert not check(Slo(), {}, 0, 0).passed


@pytest.mark.parametrize(("ratio", "p95", "message"), [
    ("2", "", "between 0 and 1"), ("0", "V1 predict=fast", "NAME=MILLISECONDS"),
])
def test_bad_thresholds_say_what_is_expected(ratio: str, p95: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Slo.parse(ratio, p95)
