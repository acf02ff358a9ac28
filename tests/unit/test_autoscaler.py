"""The KPA decision on recorded traces, with a fake clock: no processes, no sleeps."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from fnserve.backends.local.autoscaler import Decision, Params, State, decide, window_average
from fnserve.manifest import Scaling

Trace = Callable[[int], float]  # second → average concurrency in that second


def simulate(trace: Trace, params: Params, seconds: int, *, tick: int = 2, ready: int = 0,
             start_lag: int = 0) -> list[tuple[int, int, Decision]]:
    """Run the decider every ``tick`` s over ``trace``; replicas become ready ``start_lag`` s after asked."""
    samples: dict[int, float] = {}
    state, out, pending = State(), [], []  # pending: (ready_at, count)
    for now in range(0, seconds + 1):
        samples[now] = trace(now)
        for item in [p for p in pending if p[0] <= now]:
            ready = item[1]
            pending.remove(item)
        if now % tick == 0:
            decision = decide(samples, ready, params, float(now), state, since=0.0)
            state = decision.state
            if decision.desired > ready and start_lag:
                pending.append((now + start_lag, decision.desired))
            else:
                ready = decision.desired
            out.append((now, ready, decision))
    return out


def desired_at(run: list[tuple[int, int, Decision]], second: int) -> int:
    return next(d.desired for t, _, d in run if t == second)


def test_target_value_follows_knative() -> None:
    assert Params(target=100).target_value == pytest.approx(70)
    assert Params(target=100, container_concurrency=10).target_value == pytest.approx(7)
    assert Params(target=5, container_concurrency=10, utilization=1.0).target_value == 5
    assert Params(target=1, utilization=0.001).target_value == 0.01


def test_window_average_counts_gaps_as_zero_and_is_partial_after_start() -> None:
    samples = {0: 4.0, 1: 4.0, 5: 8.0}
    assert window_average(samples, now=1.5, window=60, since=0) == 4.0  # two seconds observed
    assert window_average(samples, now=5, window=60, since=0) == pytest.approx(16 / 6)
    assert window_average(samples, now=5, window=2, since=0) == 4.0  # seconds 4 (gap) and 5
    assert window_average({}, now=100, window=6, since=0) == 0.0


def test_plateau_settles_at_ceil_concurrency_over_target() -> None:
    params = Params(target=10, utilization=0.7, stable_window=60)  # TV = 7
    run = simulate(lambda s: 21.0, params, 120, ready=1)
    assert desired_at(run, 120) == 3  # ceil(21 / 7)
    assert all(not d.panic for t, _, d in run if t >= 70)


def test_burst_panics_scales_up_at_once_and_never_down_while_panicking() -> None:
    params = Params(target=10, utilization=0.7, stable_window=60)  # panic window 6 s
    burst = simulate(lambda s: 50.0 if 10 <= s < 30 else 0.0, params, 150, ready=1)
    at_12 = next(d for t, _, d in burst if t == 12)
    assert at_12.panic and at_12.desired == math.ceil(25 / 7)  # the 6 s panic window is half full
    at_16 = next(d for t, _, d in burst if t == 16)
    assert at_16.panic and at_16.desired == math.ceil(50 / 7)  # full panic window: 8 replicas
    in_panic = [(t, d.desired) for t, _, d in burst if d.panic]
    assert all(later >= earlier for (_, earlier), (_, later) in zip(in_panic, in_panic[1:], strict=False))
    # replicas keep up with demand, so the threshold (dppc / ready ≥ 2) is last met at second 12;
    # panic holds the peak for a whole stable window after that, then ends and scale-down starts
    assert next(d for t, _, d in burst if t == 70).panic and desired_at(burst, 70) == 8
    assert not next(d for t, _, d in burst if t == 72).panic and desired_at(burst, 72) == 4


def test_scale_down_at_most_halves_per_decision() -> None:
    params = Params(target=1, utilization=1.0, stable_window=6, panic_window_percentage=100)
    run = simulate(lambda s: 16.0 if s < 20 else 0.0, params, 60, ready=16)
    counts = [r for t, r, _ in run if 20 <= t <= 40]
    for before, after in zip(counts, counts[1:], strict=False):
        assert after >= before // 2


def test_decay_to_zero_only_after_a_zero_stable_window_plus_grace() -> None:
    params = Params(target=10, utilization=1.0, stable_window=10, scale_to_zero_grace=6)
    run = simulate(lambda s: 10.0 if s < 20 else 0.0, params, 60, ready=1)
    # traffic stops at 20; the stable window holds traffic until 30; grace runs to 36
    assert all(r >= 1 for t, r, _ in run if t < 36)
    zero_at = next(t for t, r, _ in run if r == 0)
    assert zero_at == 36
    assert all(r == 0 for t, r, _ in run if t >= zero_at)


def test_no_scale_to_zero_before_a_full_window_was_observed() -> None:
    params = Params(stable_window=20, scale_to_zero_grace=0)
    run = simulate(lambda s: 0.0, params, 30, ready=1)
    assert [t for t, r, _ in run if r == 0][0] == 20


def test_min_and_max_replicas_bound_every_decision() -> None:
    params = Params(target=1, utilization=1.0, min_replicas=2, max_replicas=5, stable_window=6,
                    scale_to_zero_grace=0)
    run = simulate(lambda s: 40.0 if s < 20 else 0.0, params, 80, ready=2)
    assert max(r for _, r, _ in run) == 5
    assert min(r for _, r, _ in run) == 2
    assert run[-1][1] == 2


def test_scale_down_delay_holds_the_peak() -> None:
    params = Params(target=1, utilization=1.0, stable_window=6, panic_window_percentage=100, scale_down_delay=10)
    run = simulate(lambda s: 4.0 if s < 10 else 0.0, params, 40, ready=4)
    assert all(r == 4 for t, r, _ in run if t <= 16 + 1)  # window clears at 16, delay keeps 4 until 26
    assert desired_at(run, 26) < 4


def test_single_request_on_a_concurrency_one_model() -> None:
    scaling = Scaling(containerConcurrency=1)
    fnserve = Params.from_scaling(scaling)
    run = simulate(lambda s: 1.0, fnserve, 20, ready=1)
    assert {r for _, r, _ in run} == {1} and not any(d.panic for _, _, d in run)

    # Knative's own default (utilization 70%) asks for two pods and panics
    knative = Params.from_scaling(Scaling(containerConcurrency=1, targetUtilizationPercentage=70))
    first = simulate(lambda s: 1.0, knative, 0, ready=1)[0][2]
    assert first.desired == 2 and first.panic


def test_poke_from_zero_asks_for_one_replica_at_once() -> None:
    params = Params.from_scaling(Scaling(scaleTarget=8))
    decision = decide({100: 1.0}, 0, params, 100.2, State(), since=0.0)
    assert decision.desired == 1


def test_params_from_the_manifest() -> None:
    scaling = Scaling(minReplicas=1, maxReplicas=4, scaleTarget=8, stableWindow="20s", scaleToZeroGracePeriod="5s",
                      panicWindowPercentage=20, panicThresholdPercentage=300, scaleDownDelay="1m")
    params = Params.from_scaling(scaling)
    assert (params.min_replicas, params.max_replicas, params.target) == (1, 4, 8.0)
    assert params.utilization == pytest.approx(0.7)
    assert (params.stable_window, params.panic_window, params.panic_threshold) == (20.0, 4.0, 3.0)
    assert (params.scale_down_delay, params.scale_to_zero_grace) == (60.0, 5.0)


def test_recorder_integrates_concurrency_per_second() -> None:
    from fnserve.backends.local.autoscaler import ConcurrencyRecorder

    recorder = ConcurrencyRecorder(now=10.0, keep_seconds=5)
    recorder.add(10.0, +2)      # two requests for half a second
    recorder.add(10.5, -1)      # one of them for another second
    recorder.add(11.5, -1)
    samples = recorder.samples(12.0)
    assert samples[10] == pytest.approx(2 * 0.5 + 1 * 0.5)
    assert samples[11] == pytest.approx(0.5)
    assert 12 not in samples
    assert set(recorder.samples(30.0)) == set()  # old seconds are dropped
    recorder.add(40.0, +8)
    assert recorder.samples(40.0)[40] == 8.0  # the current second is an average, not a partial sum
    assert recorder.samples(40.25)[40] == pytest.approx(8.0)
