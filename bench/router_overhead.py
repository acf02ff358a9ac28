"""What the router costs: the same V1 request sent straight to a replica and through the router.

Both targets are measured in the same run, alternating round by round, so machine noise hits both; the
figures reported are medians over rounds, and the headline is the ratio. The client runs in this
process, the router and the replica in their own, all on one machine (2 cores here: the three compete,
so absolute throughput is a floor, not a ceiling). With ``--baseline DIR`` (a checkout of another
commit) a router running that code is measured in the same rounds, before/after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from bench.common import (
    BODY,
    HEADERS,
    admin,
    checkout_name,
    machine_line,
    percentile,
    prepare_function,
    running_platform,
    workdir,
    write_results,
)


async def latency_round(session: aiohttp.ClientSession, url: str, requests: int) -> list[float]:
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            await response.read()
            assert response.status == 200, response.status
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def throughput_round(session: aiohttp.ClientSession, url: str, concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                if response.status == 200:
                    done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def measure(targets: dict[str, str], rounds: int, requests: int, concurrency: int, seconds: float) -> dict:
    results: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": [], "rps": []} for n in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for url in targets.values():  # warm up both paths and their connection pools
            await latency_round(session, url, 50)
        for _ in range(rounds):
            for name, url in targets.items():
                samples = await latency_round(session, url, requests)
                results[name]["p50"].append(statistics.median(samples))
                results[name]["p99"].append(percentile(samples, 0.99))
                results[name]["rps"].append(await throughput_round(session, url, concurrency, seconds))
    return {name: {k: round(statistics.median(v), 3) for k, v in series.items()} | {"rounds": series}
            for name, series in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per latency round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput round")
    parser.add_argument("--baseline", default=os.environ.get("FNSERVE_BENCH_BASELINE", ""),
                        help="a checkout of another fnserve commit to measure beside this one")
    args = parser.parse_args()

    with workdir() as work, ExitStack() as running:
        function = prepare_function(work, "sentiment", minReplicas=1, maxReplicas=1)
        router = running.enter_context(running_platform(work, "overhead", [function]))
        replica = admin(router).function("sentiment")["replicas"][0]["url"]
        path = "/v1/models/sentiment:predict"
        targets = {"direct": replica + path, "router": router + path}
        if args.baseline:
            base = running.enter_context(running_platform(work, "baseline", [function],
                                                          code=Path(args.baseline).resolve()))
            targets["baseline"] = base + path
        results = asyncio.run(measure(targets, args.rounds, args.requests, args.concurrency, args.seconds))
    direct, routed = results["direct"], results["router"]
    summary = {
        "added_p50_ms": round(routed["p50"] - direct["p50"], 3),
        "p50_ratio": round(routed["p50"] / direct["p50"], 3),
        "throughput_ratio": round(routed["rps"] / direct["rps"], 3),
    }
    rows = [("direct to replica", direct), ("through the router", routed)]
    before = ""
    if "baseline" in results:
        base = results["baseline"]
        summary["baseline_added_p50_ms"] = round(base["p50"] - direct["p50"], 3)
        summary["baseline_throughput_ratio"] = round(base["rps"] / direct["rps"], 3)
        rows.append((f"through the baseline checkout's router ({checkout_name(args.baseline)})", base))
        before = (f" The baseline checkout's router added {summary['baseline_added_p50_ms']:.2f} ms at p50, with "
                  f"throughput ×{summary['baseline_throughput_ratio']:.2f} of direct (its own replica: the same "
                  "model, measured in the same rounds).")
    table = "".join(f"| {label} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} |\n" for label, r in rows)
    markdown = (
        "## Router overhead (KServe V1 predict, sentiment example)\n\n"
        f"{machine_line()}; client, router and replica on the same machine. "
        f"Medians of {args.rounds} alternating rounds: {args.requests} sequential requests for latency, "
        f"{args.concurrency} concurrent clients for {args.seconds:g} s for throughput.\n\n"
        "| path | p50 latency (ms) | p99 latency (ms) | requests/s |\n|---|---|---|---|\n" + table + "\n"
        f"The router adds {summary['added_p50_ms']:.2f} ms at p50 (×{summary['p50_ratio']:.2f}); throughput "
        f"through it is ×{summary['throughput_ratio']:.2f} of direct.{before}\n")
    write_results("router_overhead", vars(args), results, summary, markdown)


if __name__ == "__main__":
    main()
