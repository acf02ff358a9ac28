"""Prometheus metrics for the router (GET /metrics).

Counters and histograms are updated on the request path (a label lookup and an add: microseconds);
replica and queue gauges are read from the backend only when scraped, so they cost nothing between
scrapes and can never disagree with `fnserve status`. Each app has its own registry, so several
routers in one process (tests) do not share numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fnserve.backends.base import FunctionStatus

REPLICA_STATES = ("starting", "ready", "draining", "failed")


class _BackendCollector(Collector):
    def __init__(self, statuses: Callable[[], list[FunctionStatus]]) -> None:
        self.statuses = statuses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        replicas = GaugeMetricFamily("fnserve_replicas", "Replicas by state", labels=["function", "state"])
        desired = GaugeMetricFamily("fnserve_desired_replicas", "Replicas the autoscaler asks for",
                                    labels=["function"])
        queued = GaugeMetricFamily("fnserve_queued_requests", "Requests waiting in the activator",
                                   labels=["function"])
        panic = GaugeMetricFamily("fnserve_panic_mode", "1 while the autoscaler is in panic mode",
                                  labels=["function"])
        for status in self.statuses():
            for state in REPLICA_STATES:
                replicas.add_metric([status.name, state], sum(r.state == state for r in status.replicas))
            desired.add_metric([status.name], status.desired or 0)
            queued.add_metric([status.name], status.queued)
            panic.add_metric([status.name], 1 if status.panic else 0)
        yield from (replicas, desired, queued, panic)


class Metrics:
    def __init__(self, statuses: Callable[[], list[FunctionStatus]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fnserve_requests", "Inference requests by function and status code",
                                ["function", "code"], registry=self.registry)
        self.duration = Histogram("fnserve_request_duration_seconds", "Inference request time in the router",
                                  ["function"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.cold_starts = Histogram("fnserve_cold_start_seconds", "Time requests waited for a replica to start",
                                     ["function"], registry=self.registry,
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
        self.registry.register(_BackendCollector(statuses))
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._stream_children: dict[str, tuple[Any, Any, Any, Any]] = {}

    def observe(self, function: str, code: int, seconds: float, cold_start_ms: float | None) -> None:
        children = self._children.get((function, code))
        if children is None:  # labels() costs a lock and a dict walk: once per function and code
            children = self._children[(function, code)] = (self.requests.labels(function, str(code)),
                                                           self.duration.labels(function))
        children[0].inc()
        children[1].observe(seconds)
        if cold_start_ms is not None:
            self.cold_starts.labels(function).observe(cold_start_ms / 1000)

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
        """Prometheus metrics: requests, latencies, cold starts, replicas, queues."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"], name="metrics")]
