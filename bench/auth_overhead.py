"""What API keys and limits cost the router: CPU time per proxied request with auth + quota on vs. off.

One router, two functions on the same model: "open" (public, no limits) and "guarded" (a key with a
rate, a concurrency limit and a daily quota, all active but never reached). Rounds alternate between
them and direct calls to the guarded function's replica; the router process's own CPU time (user +
system, from /proc, replicas excluded) is divided by the requests it proxied in that round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp

from bench.common import (
    BODY,
    HEADERS,
    ROUTER_PIDS,
    admin,
    cpu_seconds,
    machine_line,
    prepare_function,
    running_platform,
    workdir,
    write_results,
)


def create_key(url: str) -> str:
    """A key whose limits are all active but never reached."""
    limits = {"rps": 1e6, "burst": 1_000_000, "concurrency": 1000, "daily": 1_000_000_000}
    return admin(url).create_key("bench", limits=limits)["token"]


async def round_trip(session: aiohttp.ClientSession, url: str, headers: dict[str, str], requests: int,
                     concurrency: int) -> float:
    """Sends ``requests`` with ``concurrency`` clients; returns requests/s."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()
                assert response.status == 200, (response.status, await response.text())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def measure(router: str, replica: str, token: str, rounds: int, requests: int,
                  concurrency: int) -> dict[str, Any]:
    pid = ROUTER_PIDS[router]
    targets = {
        "off": (f"{router}/v1/models/open:predict", HEADERS),
        "on": (f"{router}/v1/models/guarded:predict", {**HEADERS, "Authorization": f"Bearer {token}"}),
        "direct": (f"{replica}/v1/models/guarded:predict", HEADERS),
    }
    out: dict[str, dict[str, list[float]]] = {n: {"cpu_us": [], "rps": []} for n in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for url, headers in targets.values():
            await round_trip(session, url, headers, 200, concurrency)  # warm pools and caches
        for _ in range(rounds):
            for name, (url, headers) in targets.items():
                before = cpu_seconds(pid)
                out[name]["rps"].append(await round_trip(session, url, headers, requests, concurrency))
                out[name]["cpu_us"].append((cpu_seconds(pid) - before) / requests * 1e6)
    return {name: {"cpu_us_median": round(statistics.median(v["cpu_us"]), 1),
                   "rps_median": round(statistics.median(v["rps"]), 1), "rounds": v} for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with workdir() as work:
        open_fn = prepare_function(work, "open", public=True, minReplicas=1, maxReplicas=1)
        guarded = prepare_function(work, "guarded", public=False, minReplicas=1, maxReplicas=1)
        with running_platform(work, "auth", [open_fn, guarded]) as router:
            replica = admin(router).function("guarded")["replicas"][0]["url"]
            results = asyncio.run(measure(router, replica, create_key(router), args.rounds, args.requests,
                                          args.concurrency))
    on, off, direct = results["on"], results["off"], results["direct"]
    # on and off run back to back in each round, so their ratio there cancels drift between rounds
    ratios = [a / b for a, b in zip(on["rounds"]["cpu_us"], off["rounds"]["cpu_us"], strict=True)]
    summary = {"cpu_ratio_on_off": round(statistics.median(ratios), 3),
               "throughput_router_over_direct": round(on["rps_median"] / direct["rps_median"], 3)}
    added = (summary["cpu_ratio_on_off"] - 1) * 100
    markdown = (
        "## API keys and limits: router CPU per request (sentiment example)\n\n"
        f"{machine_line()}. Medians of {args.rounds} alternating rounds of "
        f"{args.requests} requests from {args.concurrency} concurrent clients; CPU is the router process's "
        "own user + system time (replicas excluded) divided by the requests it proxied; the on/off ratio is "
        "the median of the per-round ratios (both measured back to back in each round).\n\n"
        "| path | router CPU per request (µs) | requests/s |\n|---|---|---|\n"
        f"| router, public function, no limits (auth + quota off) | {off['cpu_us_median']:.0f} | {off['rps_median']:.0f} |\n"
        f"| router, API key + rate + concurrency + daily quota (on) | {on['cpu_us_median']:.0f} | {on['rps_median']:.0f} |\n"
        f"| direct to the replica | – | {direct['rps_median']:.0f} |\n\n"
        f"Auth + quota change the router's CPU per request by {added:+.1f}% (×{summary['cpu_ratio_on_off']:.3f}; "
        f"goal ≤ +10% — {'met' if added <= 10 else 'not met'}). Throughput through the router with auth + quota "
        f"is ×{summary['throughput_router_over_direct']:.2f} of direct.\n")
    write_results("auth_overhead", vars(args), results, summary, markdown)


if __name__ == "__main__":
    main()
