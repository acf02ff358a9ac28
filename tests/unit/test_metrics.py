"""The router's Prometheus metrics, in process: per-revision series and their bound, the build and process
metrics, the backend's restart and queue counts read at scrape time, and the checks a Redis limiter skips
while Redis is unreachable (failing open) counted one by one."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import redis

from fnserve.backends.base import RESTART_REASONS, FunctionStatus
from fnserve.router.metrics import KEEP_REVISIONS, Metrics
from fnserve.router.redis_counters import RedisDailyCounters
from fnserve.router.redis_quota import RedisStore
from fnserve.state import StateStore
from tests.conftest import free_port


def value(text: str, series: str) -> float | None:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_each_revision_has_its_own_series_and_only_the_newest_are_kept() -> None:
    metrics = Metrics(lambda: [])
    for revision in range(1, KEEP_REVISIONS + 2):  # one more than are kept
        metrics.observe("f", revision, 200, 0.01, None)
    metrics.observe("f", KEEP_REVISIONS + 1, 504, 30.0, 250.0)
    metrics.observe("g", 1, 200, 0.01, None)  # another function keeps its own
    text = metrics.render().decode()
    newest = KEEP_REVISIONS + 1
    assert value(text, 'fnserve_requests_total{code="200",function="f",revision="1"}') is None
    assert value(text, 'fnserve_request_duration_seconds_count{function="f",revision="1"}') is None
    for revision in range(2, newest + 1):
        assert value(text, f'fnserve_requests_total{{code="200",function="f",revision="{revision}"}}') == 1
    assert value(text, f'fnserve_requests_total{{code="504",function="f",revision="{newest}"}}') == 1
    assert value(text, f'fnserve_request_duration_seconds_count{{function="f",revision="{newest}"}}') == 2
    assert value(text, f'fnserve_cold_start_seconds_count{{function="f",revision="{newest}"}}') == 1
    assert value(text, f'fnserve_cold_start_seconds_bucket{{function="f",le="0.25",revision="{newest}"}}') == 1
    assert value(text, 'fnserve_requests_total{code="200",function="g",revision="1"}') == 1

    metrics.observe("f", 1, 200, 0.01, None)  # rolled back to revision 1: its series start again
    text = metrics.render().decode()
    assert value(text, 'fnserve_requests_total{code="200",function="f",revision="1"}') == 1
    assert value(text, 'fnserve_requests_total{code="200",function="f",revision="2"}') is None
    assert len(re.findall(r'^fnserve_requests_total\{code="\d+",function="f"', text, re.M)) == KEEP_REVISIONS + 1


def test_build_info_and_the_process_metrics_are_exported() -> None:
    text = Metrics(lambda: []).render().decode()
    assert re.search(r'^fnserve_build_info\{implementation="CPython",python="3\.\d+\.\d+",version="\d[^"]*"\} 1\.0$',
                     text, re.M)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert re.search(rf"^{name} \d", text, re.M), name
    assert "python_info{" in text and "python_gc_collections_total{" in text


def test_restarts_and_queue_refusals_are_exported_where_the_backend_counts_them() -> None:
    statuses = [FunctionStatus("local", 3, True, restarts={"exited": 2, "start_failed": 1}, queue_rejections=4),
                FunctionStatus("cluster", 1, True)]  # a backend that counts neither
    text = Metrics(lambda: statuses).render().decode()
    expected = {"exited": 2, "unresponsive": 0, "unreachable": 0, "start_failed": 1}
    assert set(expected) == set(RESTART_REASONS)
    for reason, count in expected.items():
        assert value(text, f'fnserve_replica_restarts_total{{function="local",reason="{reason}"}}') == count
    assert value(text, 'fnserve_queue_rejections_total{function="local"}') == 4
    assert 'function="cluster",reason=' not in text and 'fnserve_queue_rejections_total{function="cluster"}' not in text
    assert value(text, 'fnserve_replicas{function="cluster",state="ready"}') == 0


def test_admission_decisions_are_counted_per_key() -> None:
    metrics = Metrics(lambda: [])
    for key, decision in [("k1", "admitted"), ("k1", "admitted"), ("k1", "rate"), ("public", "daily")]:
        metrics.admission(key, decision)
    text = metrics.render().decode()
    assert value(text, 'fnserve_admission_decisions_total{decision="admitted",key="k1"}') == 2
    assert value(text, 'fnserve_admission_decisions_total{decision="rate",key="k1"}') == 1
    assert value(text, 'fnserve_admission_decisions_total{decision="daily",key="public"}') == 1


def test_every_limit_check_made_without_redis_is_counted(tmp_path: Path) -> None:
    """Redis not there (a closed port): each rate and concurrency check is admitted unchecked and each daily
    check counted by this router alone — also those in the second Redis is not retried — and each counted."""
    metrics = Metrics(lambda: [])
    url = f"redis://127.0.0.1:{free_port()}/0"
    state = StateStore(tmp_path / "fnserve.db")

    async def main() -> None:
        store = RedisStore(url, failed_open=metrics.failed_open)
        daily = RedisDailyCounters(state, store.client, redis.Redis.from_url(url), failed_open=metrics.failed_open)
        try:
            for _ in range(2):
                assert (await store.rate("k1", 1.0, 1)).allowed
                assert await store.acquire("k1", 1) == "open"
            assert (await daily.take("k1", 10, 0.0))[0]
        finally:
            await store.close()

    asyncio.run(main())
    state.close()
    text = metrics.render().decode()
    assert value(text, 'fnserve_limiter_fail_open_total{limit="rate"}') == 2
    assert value(text, 'fnserve_limiter_fail_open_total{limit="concurrency"}') == 2
    assert value(text, 'fnserve_limiter_fail_open_total{limit="daily"}') == 1



def test_the_revision_still_serving_keeps_its_series_however_many_canaries_came_after() -> None:
    metrics = Metrics(lambda: [])
    metrics.observe("f", 1, 200, 0.01, None)
    for canary in range(2, KEEP_REVISIONS + 4):  # canaries tried and dropped, revision 1 serving throughout
        metrics.observe("f", canary, 200, 0.01, None)
        metrics.observe("f", 1, 200, 0.01, None)
    text = metrics.render().decode()
    assert value(text, 'fnserve_requests_total{code="200",function="f",revision="1"}') == KEEP_REVISIONS + 3
    assert value(text, 'fnserve_requests_total{code="200",function="f",revision="2"}') is None  # the stalest
