"""Cold starts on the embedded backend: first-request latency from zero, fork server vs plain spawn.

Two routers run side by side, one forking replicas from a warm fork server, one spawning a fresh
interpreter per replica (FNSERVE_FORKSERVER=false); trials alternate between them, so both see the same
machine noise, and the headline is the ratio of their medians. Each trial waits until the function has
scaled to zero, then times one V1 request end to end (and reads the router's X-Fnserve-Cold-Start).
Then, on the fork router: the time from a step load (0 → 8 clients) to the desired replica count, and
the failures in bursts of 50 concurrent first requests.
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
    admin,
    machine_line,
    percentile,
    prepare_function,
    running_platform,
    workdir,
    write_results,
)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def at_zero(url: str, name: str) -> bool:
    status = await asyncio.to_thread(admin(url).function, name)
    return not status["replicas"] and status["desired"] == 0


async def ready_replicas(url: str, name: str) -> int:
    status = await asyncio.to_thread(admin(url).function, name)
    return sum(r["state"] == "ready" for r in status["replicas"])


async def cold_request(session: aiohttp.ClientSession, url: str, name: str) -> tuple[float, float]:
    await wait_until(lambda: at_zero(url, name), 60, f"{name} to scale to zero")
    started = time.perf_counter()
    async with session.post(f"{url}/v1/models/{name}:predict", data=BODY, headers=HEADERS) as response:
        await response.read()
        assert response.status == 200, response.status
        header = float(response.headers["X-Fnserve-Cold-Start"])
    return (time.perf_counter() - started) * 1000, header


async def step_to_desired(session: aiohttp.ClientSession, url: str, name: str, clients: int, want: int) -> float:
    """Seconds from the start of a constant load of ``clients`` to ``want`` ready replicas."""
    await wait_until(lambda: at_zero(url, name), 60, f"{name} to scale to zero")
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            async with session.post(f"{url}/v1/models/{name}:predict", data=BODY, headers=HEADERS) as response:
                await response.read()

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    try:
        await wait_until(lambda: _at_least(url, name, want), 60, f"{want} ready replicas")
        return time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _at_least(url: str, name: str, want: int) -> bool:
    return await ready_replicas(url, name) >= want


async def burst(session: aiohttp.ClientSession, url: str, name: str, size: int) -> int:
    """Failed requests among ``size`` concurrent first requests to a function at zero."""
    await wait_until(lambda: at_zero(url, name), 60, f"{name} to scale to zero")

    async def one() -> int:
        async with session.post(f"{url}/v1/models/{name}:predict", data=BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    codes = await asyncio.gather(*(one() for _ in range(size)))
    return sum(code != 200 for code in codes)


async def run(fork_url: str, spawn_url: str, trials: int, steps: int, bursts: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        cold: dict[str, dict[str, list[float]]] = {m: {"total_ms": [], "header_ms": []} for m in ("fork", "spawn")}
        for _ in range(trials):
            for mode, url in (("fork", fork_url), ("spawn", spawn_url)):
                total, header = await cold_request(session, url, "cold")
                cold[mode]["total_ms"].append(round(total, 1))
                cold[mode]["header_ms"].append(header)
        step = [round(await step_to_desired(session, fork_url, "step", 8, 4), 2) for _ in range(steps)]
        failures = [await burst(session, fork_url, "burst", 50) for _ in range(bursts)]
    return {"cold": cold, "step_seconds": step, "burst_failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()

    with workdir() as work:
        cold = prepare_function(work, "cold", minReplicas=0, stableWindow="1s", scaleToZeroGracePeriod="0s")
        step = prepare_function(work, "step", minReplicas=0, maxReplicas=4, scaleTarget=2, stableWindow="6s",
                                scaleToZeroGracePeriod="0s")
        burst_fn = prepare_function(work, "burst", minReplicas=0, maxReplicas=3, scaleTarget=4,
                                    stableWindow="2s", scaleToZeroGracePeriod="0s")
        with running_platform(work, "fork", [cold, step, burst_fn]) as fork_url, \
                running_platform(work, "spawn", [cold], env={"FNSERVE_FORKSERVER": "false"}) as spawn_url:
            results = asyncio.run(run(fork_url, spawn_url, args.trials, args.steps, args.bursts))

    summary: dict[str, Any] = {}
    for mode, series in results["cold"].items():
        summary[mode] = {"p50_ms": round(statistics.median(series["total_ms"]), 1),
                         "p95_ms": round(percentile(series["total_ms"], 0.95), 1),
                         "start_p50_ms": round(statistics.median(series["header_ms"]), 1)}
    summary["spawn_over_fork_p50"] = round(summary["spawn"]["p50_ms"] / summary["fork"]["p50_ms"], 2)
    summary["step_to_desired_s_median"] = round(statistics.median(results["step_seconds"]), 2)
    summary["burst_failures_total"] = sum(results["burst_failures"])
    fork, spawn = summary["fork"], summary["spawn"]
    goal = "met" if fork["p50_ms"] <= 250 and summary["spawn_over_fork_p50"] >= 4 else "not met"
    markdown = (
        "## Cold start from zero (sentiment example, embedded backend)\n\n"
        f"{machine_line()}. {args.trials} trials per mode, alternating between "
        "two routers running side by side; each trial waits for scale to zero, then times one V1 request "
        "end to end (client → router → replica start → model load → answer). Autoscaler tick: 2 s (Knative's).\n\n"
        "| replica start | p50 first request (ms) | p95 first request (ms) | p50 X-Fnserve-Cold-Start (ms) |\n"
        "|---|---|---|---|\n"
        f"| fork from a warm fork server | {fork['p50_ms']:.0f} | {fork['p95_ms']:.0f} | {fork['start_p50_ms']:.0f} |\n"
        f"| plain spawn (fresh interpreter) | {spawn['p50_ms']:.0f} | {spawn['p95_ms']:.0f} | "
        f"{spawn['start_p50_ms']:.0f} |\n\n"
        f"Plain spawn / fork server at p50: ×{summary['spawn_over_fork_p50']:.1f} "
        f"(goal: fork p50 ≤ 250 ms and ≥ 4× better than spawn — {goal}).\n\n"
        f"Step load 0 → 8 closed-loop clients (scaleTarget 2, maxReplicas 4): 4 ready replicas after "
        f"{summary['step_to_desired_s_median']:.2f} s (median of {args.steps}; runs {results['step_seconds']}).\n\n"
        f"Bursts of 50 concurrent first requests from zero (maxReplicas 3): "
        f"{summary['burst_failures_total']} failed of {50 * args.bursts}.\n")
    write_results("cold_start", vars(args), results, summary, markdown)


if __name__ == "__main__":
    main()
