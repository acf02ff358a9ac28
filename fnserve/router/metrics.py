"""Prometheus metrics for the router (GET /metrics, for a key with the ``metrics`` or ``admin`` scope).

Counters and histograms are updated on the request path (a label lookup and an add: microseconds);
replica, queue and restart numbers are read from the backend only when scraped, so they cost nothing
between scrapes and can never disagree with `fnserve status`. Each app has its own registry, so several
routers in one process (tests) do not share numbers. Beside fnserve's own: ``fnserve_build_info`` and
the process, platform and garbage-collector metrics of prometheus_client (``process_*``, ``python_*``).

Cardinality is bounded by what an operator made, never by what a caller sends: ``function`` by the
deployed functions (an unknown name is not counted), ``revision`` by the newest ``KEEP_REVISIONS`` a
function served through this router (older ones' series are dropped), ``key`` by the API keys
(``public`` for every caller of a public function), ``code``, ``decision`` and ``reason`` by the code.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import fnserve
from fnserve.backends.base import RESTART_REASONS, FunctionStatus

REPLICA_STATES = ("starting", "ready", "draining", "failed")
KEEP_REVISIONS = 3
"""Revisions of one function whose request series are kept: the serving one, a canary, the one before."""
FAIL_OPEN_LIMITS = ("rate", "concurrency", "daily")
"""What a shared limiter checks in Redis, and so what goes unenforced (or counted per router) without it."""


class _BackendCollector(Collector):
    def __init__(self, statuses: Callable[[], list[FunctionStatus]]) -> None:
        self.statuses = statuses

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily("fnserve_replicas", "Replicas by state", labels=["function", "state"])
        desired = GaugeMetricFamily("fnserve_desired_replicas", "Replicas the autoscaler asks for",
                                    labels=["function"])
        queued = GaugeMetricFamily("fnserve_queued_requests", "Requests waiting in the activator",
                                   labels=["function"])
        panic = GaugeMetricFamily("fnserve_panic_mode", "1 while the autoscaler is in panic mode",
                                  labels=["function"])
        restarts = CounterMetricFamily("fnserve_replica_restarts", "Replicas replaced because they exited, stopped "
                                       "answering health checks or connections, or failed to start",
                                       labels=["function", "reason"])
        rejected = CounterMetricFamily("fnserve_queue_rejections", "Requests answered 503 because the activator's "
                                       "queue for the function was full", labels=["function"])
        for status in self.statuses():
            for state in REPLICA_STATES:
                replicas.add_metric([status.name, state], sum(r.state == state for r in status.replicas))
            desired.add_metric([status.name], status.desired or 0)
            queued.add_metric([status.name], status.queued)
            panic.add_metric([status.name], 1 if status.panic else 0)
            if status.restarts is not None:  # a backend that counts them (not a cluster: Kubernetes restarts pods)
                for reason in RESTART_REASONS:
                    restarts.add_metric([status.name, reason], status.restarts.get(reason, 0))
            if status.queue_rejections is not None:
                rejected.add_metric([status.name], status.queue_rejections)
        yield from (replicas, desired, queued, panic, restarts, rejected)


class Metrics:
    def __init__(self, statuses: Callable[[], list[FunctionStatus]]) -> None:
        self.registry = CollectorRegistry()
        Info("fnserve_build", "The fnserve router that answers: its version and Python's",
             registry=self.registry).info({"version": fnserve.__version__, "python": platform.python_version(),
                                           "implementation": platform.python_implementation()})
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter("fnserve_requests", "Inference requests by function, revision and status code",
                                ["function", "revision", "code"], registry=self.registry)
        self.duration = Histogram("fnserve_request_duration_seconds", "Inference request time in the router",
                                  ["function", "revision"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.cold_starts = Histogram("fnserve_cold_start_seconds", "Time requests waited for a replica to start",
                                     ["function", "revision"], registry=self.registry,
                                     buckets=(.05, .1, .15, .2, .25, .35, .5, .75, 1, 1.5, 2, 3, 5, 10, 30))
        self.ttft = Histogram("fnserve_time_to_first_token_seconds",
                              "Streamed answers: time from forwarding the request to the first chunk",
                              ["function"], registry=self.registry,
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.chunk_gaps = Histogram("fnserve_stream_chunk_gap_seconds", "Streamed answers: pause between chunks",
                                    ["function"], registry=self.registry,
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))
        self.tokens = Counter("fnserve_tokens", "Tokens of generative and embedding requests, as their replicas "
                                                "reported them", ["function", "kind"], registry=self.registry)
        self.admissions = Counter("fnserve_admission_decisions", "Inference requests by API key ('public' for "
                                  "public functions) and what admission decided: admitted, the limit that refused "
                                  "it with a 429 (rate, concurrency, daily, tpm, tpd), invalid (max_tokens above "
                                  "the tpm: 400) or unavailable (no database to check the quota: 503)",
                                  ["key", "decision"], registry=self.registry)
        self.fail_open = Counter("fnserve_limiter_fail_open", "Limit checks the shared limiter could not make "
                                 "because Redis was unreachable: rate and concurrency admitted unchecked, daily "
                                 "quotas counted by this router alone", ["limit"], registry=self.registry)
        for limit in FAIL_OPEN_LIMITS:  # present at 0 from the start, so rate() sees the first failure
            self.fail_open.labels(limit)
        self.registry.register(_BackendCollector(statuses))
        self._children: dict[tuple[str, int | None, int], tuple[Any, Any, Any]] = {}
        self._revisions: dict[str, dict[int | None, int]] = {}
        """Each function's revisions with series, and when each last served a request (a count)."""
        self._seen = 0
        self._stream_children: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._decisions: dict[tuple[str, str], Any] = {}

    def observe(self, function: str, revision: int | None, code: int, seconds: float,
                cold_start_ms: float | None) -> None:
        children = self._children.get((function, revision, code))
        if children is None:  # labels() costs a lock and a dict walk: once per function, revision and code
            children = self._label(function, revision, code)
        self._seen += 1
        self._revisions[function][revision] = self._seen  # the least recently served revision is dropped first
        children[0].inc()
        children[1].observe(seconds)
        if cold_start_ms is not None:
            children[2].observe(cold_start_ms / 1000)

    def _label(self, function: str, revision: int | None, code: int) -> tuple[Any, Any, Any]:
        seen = self._revisions.setdefault(function, {})
        if revision not in seen:
            self._seen += 1
            seen[revision] = self._seen
            if len(seen) > KEEP_REVISIONS:  # not the one serving: it was served just now
                stale = min((r for r in seen if r != revision), key=seen.__getitem__)
                del seen[stale]
                self._forget(function, stale)
        number = "" if revision is None else str(revision)
        children = self._children[(function, revision, code)] = (
            self.requests.labels(function, number, str(code)), self.duration.labels(function, number),
            self.cold_starts.labels(function, number))
        return children

    def _forget(self, function: str, revision: int | None) -> None:
        """Drop an old revision's series (its last increments since the previous scrape go with them)."""
        number = "" if revision is None else str(revision)
        for key in [key for key in self._children if key[:2] == (function, revision)]:
            del self._children[key]
            with contextlib.suppress(KeyError):
                self.requests.remove(function, number, str(key[2]))
        for histogram in (self.duration, self.cold_starts):
            with contextlib.suppress(KeyError):
                histogram.remove(function, number)

    def admission(self, key: str, decision: str) -> None:
        """What admission decided for one invocation of the caller ``key`` (a key id, or "public")."""
        child = self._decisions.get((key, decision))
        if child is None:
            child = self._decisions[(key, decision)] = self.admissions.labels(key, decision)
        child.inc()

    def failed_open(self, limit: str) -> None:
        """One ``limit`` check the shared limiter could not make (Redis unreachable)."""
        self.fail_open.labels(limit).inc()

    def observe_stream(self, function: str, ttft_ms: float | None, gaps_ms: list[float], prompt_tokens: int,
                       completion_tokens: int) -> None:
        """A streamed or token-metered answer's timing and tokens (once per request, at its end)."""
        children = self._stream_children.get(function)
        if children is None:  # as in observe(): labels() once per function
            children = self._stream_children[function] = (
                self.ttft.labels(function), self.chunk_gaps.labels(function),
                self.tokens.labels(function, "prompt"), self.tokens.labels(function, "completion"))
        ttft, gaps, prompt, completion = children
        if ttft_ms is not None:
            ttft.observe(ttft_ms / 1000)
        for gap in gaps_ms:
            gaps.observe(gap / 1000)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def routes(metrics: Metrics) -> list[Route]:
    async def scrape(request: Request) -> Response:
        """Prometheus metrics: requests, latencies, cold starts, admission, replicas, queues, the process."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"], name="metrics")]
