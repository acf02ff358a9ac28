"""What the access log and tracing cost the router in CPU per request (goal: the access log ≤ 5%).

Four routers, each serving the same example model from a replica of its own: the access log off, the
access log on (the default), and the access log on with OpenTelemetry tracing exporting spans over
OTLP/HTTP to a receiver on loopback (tests/otlp_receiver.py), every request traced or one in ten. The routers' logs go to files, as a
container's stdout goes to its runtime. Rounds alternate between them; a router's own CPU time (user +
system, from /proc; replicas excluded) is divided by the requests it proxied in the round, and the
ratios are medians of the per-round ratios, so drift on a shared machine cancels.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import ExitStack
from typing import Any

from bench.auth_overhead import _per_round, measure
from bench.common import HEADERS, ROUTER_PIDS, machine_line, prepare_function, running_platform, workdir, write_results
from tests.otlp_receiver import OtlpReceiver

GOAL = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with workdir() as work, ExitStack() as running:
        receiver = running.enter_context(OtlpReceiver())
        function = prepare_function(work, "open", public=True, minReplicas=1, maxReplicas=1)
        configurations = {
            "off": {"FNSERVE_ACCESS_LOG": "false"},
            "access_log": {"FNSERVE_ACCESS_LOG": "true"},
            "access_log_and_traces": {"FNSERVE_ACCESS_LOG": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
            "access_log_and_sampled_traces": {"FNSERVE_ACCESS_LOG": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                              "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                              "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        }
        targets: dict[str, tuple[str, dict[str, str], int | None]] = {}
        for name, env in configurations.items():
            url = running.enter_context(running_platform(work, name, [function], env=env))
            targets[name] = (f"{url}/v1/models/open:predict", HEADERS, ROUTER_PIDS[url])
        results = asyncio.run(measure(targets, args.rounds, args.requests, args.concurrency))
        spans = len(receiver.spans)
    summary: dict[str, Any] = {
        "access_log_cpu_ratio": _per_round(results, "access_log", "off"),
        "traces_cpu_ratio": _per_round(results, "access_log_and_traces", "access_log"),
        "sampled_traces_cpu_ratio": _per_round(results, "access_log_and_sampled_traces", "access_log"),
        "router_cpu_us_off": results["off"]["cpu_us_median"],
        "router_cpu_us_access_log": results["access_log"]["cpu_us_median"],
        "router_cpu_us_traces": results["access_log_and_traces"]["cpu_us_median"],
        "router_cpu_us_sampled_traces": results["access_log_and_sampled_traces"]["cpu_us_median"],
        "spans_received": spans}
    added = (summary["access_log_cpu_ratio"] - 1) * 100
    rows = [("access log off", results["off"]), ("access log on (the default)", results["access_log"]),
            ("access log on + every request traced, exported over OTLP/HTTP", results["access_log_and_traces"]),
            ("access log on + 10% of requests traced (parentbased_traceidratio 0.1)",
             results["access_log_and_sampled_traces"])]
    table = "".join(f"| {label} | {r['cpu_us_median']:.0f} | {r['rps_median']:.0f} |\n" for label, r in rows)
    markdown = (
        "## Router CPU per request: the access log and traces (sentiment example)\n\n"
        f"{machine_line()}. Four routers, each with its own replica of the same model; medians of {args.rounds} "
        f"alternating rounds of {args.requests} requests from {args.concurrency} concurrent clients; CPU is each "
        "router's own user + system time divided by the requests it proxied; ratios are medians of the per-round "
        "ratios.\n\n"
        "| router | CPU per request (µs) | requests/s |\n|---|---|---|\n" + table + "\n"
        f"The access log adds {added:+.1f}% to the router's CPU per request (×{summary['access_log_cpu_ratio']:.3f}; "
        f"goal ≤ ×{GOAL} — {'met' if summary['access_log_cpu_ratio'] <= GOAL else 'not met'}). Tracing every "
        f"request (5 spans in the router, exported in batches; {spans} spans received) adds "
        f"×{summary['traces_cpu_ratio']:.3f} on top; sampling 10% of traces "
        f"(OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1) adds "
        f"×{summary['sampled_traces_cpu_ratio']:.3f}.\n")
    write_results("observability", vars(args), results, summary, markdown)


if __name__ == "__main__":
    main()
