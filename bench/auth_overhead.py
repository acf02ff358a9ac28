"""What the router costs in CPU per proxied request: with auth + quota on vs. off, against the bare
floor of a Python proxy hop, and against an older checkout of fnserve.

One router, two functions on the same model: "open" (public, no limits) and "guarded" (a key with a
rate, a concurrency limit and a daily quota, all active but never reached). Rounds alternate between
them, a bare aiohttp proxy (bench/bare_proxy.py) in front of the same replica, and direct calls to the
replica; with ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base
REV``) a second router running that code serves "guarded" from the same model in the same rounds. A
process's own CPU time (user + system, from /proc, replicas excluded) is divided by the requests it
proxied in that round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    BODY,
    HEADERS,
    ROUTER_PIDS,
    admin,
    checkout_name,
    cpu_seconds,
    free_port,
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


@contextmanager
def bare_proxy(replica: str) -> Iterator[tuple[str, int]]:
    """bench/bare_proxy.py in front of ``replica``; yields its URL and pid once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.bare_proxy", str(port), replica],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/models/guarded:predict", data=BODY,
                                                                   headers=HEADERS), timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the bare proxy did not start") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(10)


async def measure(targets: dict[str, tuple[str, dict[str, str], int | None]], rounds: int, requests: int,
                  concurrency: int) -> dict[str, Any]:
    """Alternating rounds over ``targets`` (name → URL, headers, pid whose CPU is counted or None)."""
    out: dict[str, dict[str, list[float]]] = {n: {"cpu_us": [], "rps": []} for n in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for url, headers, _ in targets.values():
            await round_trip(session, url, headers, 200, concurrency)  # warm pools and caches
        for _ in range(rounds):
            for name, (url, headers, pid) in targets.items():
                before = cpu_seconds(pid) if pid else 0.0
                out[name]["rps"].append(await round_trip(session, url, headers, requests, concurrency))
                if pid:
                    out[name]["cpu_us"].append((cpu_seconds(pid) - before) / requests * 1e6)
    return {name: {"cpu_us_median": round(statistics.median(v["cpu_us"]), 1) if v["cpu_us"] else None,
                   "rps_median": round(statistics.median(v["rps"]), 1), "rounds": v} for name, v in out.items()}


def _per_round(results: dict[str, Any], a: str, b: str) -> float:
    """Median over rounds of a's CPU per request / b's (back to back in each round: drift cancels)."""
    pairs = zip(results[a]["rounds"]["cpu_us"], results[b]["rounds"]["cpu_us"], strict=True)
    return round(statistics.median(x / y for x, y in pairs), 3)


def _cpu(result: dict[str, Any]) -> str:
    return "–" if result["cpu_us_median"] is None else f"{result['cpu_us_median']:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline", default=os.environ.get("FNSERVE_BENCH_BASELINE", ""),
                        help="a checkout of another fnserve commit to measure beside this one")
    args = parser.parse_args()

    with workdir() as work, ExitStack() as running:
        open_fn = prepare_function(work, "open", public=True, minReplicas=1, maxReplicas=1)
        guarded = prepare_function(work, "guarded", public=False, minReplicas=1, maxReplicas=1)
        router = running.enter_context(running_platform(work, "auth", [open_fn, guarded]))
        replica = admin(router).function("guarded")["replicas"][0]["url"]
        token = {**HEADERS, "Authorization": f"Bearer {create_key(router)}"}
        targets: dict[str, tuple[str, dict[str, str], int | None]] = {
            "off": (f"{router}/v1/models/open:predict", HEADERS, ROUTER_PIDS[router]),
            "on": (f"{router}/v1/models/guarded:predict", token, ROUTER_PIDS[router]),
        }
        if args.baseline:
            base = running.enter_context(running_platform(work, "baseline", [guarded],
                                                          code=Path(args.baseline).resolve()))
            targets["baseline_on"] = (f"{base}/v1/models/guarded:predict",
                                      {**HEADERS, "Authorization": f"Bearer {create_key(base)}"}, ROUTER_PIDS[base])
        bare, bare_pid = running.enter_context(bare_proxy(replica))
        targets["bare"] = (f"{bare}/v1/models/guarded:predict", HEADERS, bare_pid)
        targets["direct"] = (f"{replica}/v1/models/guarded:predict", HEADERS, None)
        results = asyncio.run(measure(targets, args.rounds, args.requests, args.concurrency))
    on, off, direct, floor = results["on"], results["off"], results["direct"], results["bare"]
    summary: dict[str, Any] = {
        "cpu_ratio_on_off": _per_round(results, "on", "off"), "cpu_ratio_on_bare": _per_round(results, "on", "bare"),
        "router_cpu_us_on": on["cpu_us_median"], "bare_cpu_us": floor["cpu_us_median"],
        "throughput_router_over_direct": round(on["rps_median"] / direct["rps_median"], 3)}
    added = (summary["cpu_ratio_on_off"] - 1) * 100
    rows = [("router, public function, no limits (auth + quota off)", off),
            ("router, API key + rate + concurrency + daily quota (on)", on)]
    before = ""
    if "baseline_on" in results:
        summary["baseline_cpu_us_on"] = results["baseline_on"]["cpu_us_median"]
        summary["cpu_ratio_on_baseline"] = _per_round(results, "on", "baseline_on")
        rows.append((f"baseline checkout ({checkout_name(args.baseline)}), the same with auth + limits on",
                     results["baseline_on"]))
        before = (f" Against the baseline checkout, CPU per request with auth + limits on is "
                  f"×{summary['cpu_ratio_on_baseline']:.3f} ({results['baseline_on']['cpu_us_median']:.0f} → "
                  f"{on['cpu_us_median']:.0f} µs).")
    rows += [("bare aiohttp proxy hop (bench/bare_proxy.py: no auth, limits or accounting)", floor),
             ("direct to the replica", direct)]
    table = "".join(f"| {label} | {_cpu(r)} | {r['rps_median']:.0f} |\n" for label, r in rows)
    goal = 250
    markdown = (
        "## Router CPU per request: auth and limits, the bare hop, before and after (sentiment example)\n\n"
        f"{machine_line()}. Medians of {args.rounds} alternating rounds of "
        f"{args.requests} requests from {args.concurrency} concurrent clients; CPU is each proxy process's "
        "own user + system time (replicas excluded) divided by the requests it proxied; ratios are medians of "
        "the per-round ratios (measured back to back in each round).\n\n"
        "| path | CPU per request (µs) | requests/s |\n|---|---|---|\n" + table + "\n"
        f"Auth + quota change the router's CPU per request by {added:+.1f}% (×{summary['cpu_ratio_on_off']:.3f}). "
        f"With them on it is {on['cpu_us_median']:.0f} µs (goal ≤ {goal} µs — "
        f"{'met' if on['cpu_us_median'] <= goal else 'not met'}), ×{summary['cpu_ratio_on_bare']:.2f} of the bare "
        f"aiohttp hop.{before} Throughput through the router with auth + quota is "
        f"×{summary['throughput_router_over_direct']:.2f} of direct.\n")
    write_results("auth_overhead", vars(args), results, summary, markdown)


if __name__ == "__main__":
    main()
