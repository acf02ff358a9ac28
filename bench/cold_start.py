"""Cold starts on the embedded backend: from zero to the first answer, against the floor of this machine.

Three things are measured trial by trial, interleaved so that all see the same machine noise:

- the floor (bench/cold_floor.py): a warm parent forks, the child loads the same model.onnx and answers
  one request through uvicorn on a socket bound before the fork — what no server can skip;
- fnserve with its fork server, through the router, as a user meets it: each trial waits until the
  function has scaled to zero, then times one V1 request end to end; the function's
  /api/functions/NAME/stats then says where that cold start's time went (the replica reports its own
  phases on its ready pipe), which gives the breakdown table;
- the same without the fork server's spare child (FNSERVE_FORK_SPARE_AFTER=-1: each replica forked on
  request), to show what the spare saves;
- fnserve's spawn fallback (FNSERVE_FORKSERVER=false: a fresh interpreter per replica), fewer trials.

Then, on the fork router: the time from a step load (0 → 8 clients) to the desired replica count, and
bursts of 50 concurrent first requests from zero, each of which must be answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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

GOAL_P50, GOAL_P99 = 1.5, 2.5
"""fnserve's cold start over the floor's median, at its median and at its p99 (issue [Z])."""

STAGES = (("queueMs", "router queue (request → launch, ready → dispatch)"), ("forkMs", "fork (launch → replica code runs)"),
          ("importsMs", "imports and construction left (manifest, handler, model object)"),
          ("loadMs", "model load"), ("readyMs", "ready (server set up, its signal heard by the router)"),
          ("serverMs", "server start (request waits in the accept queue)"),
          ("answerMs", "first inference and answer, through the router"))


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
    """One request to ``name`` once it is at zero: (ms end to end at the client, X-Fnserve-Cold-Start)."""
    await wait_until(lambda: at_zero(url, name), 60, f"{name} to scale to zero")
    started = time.perf_counter()
    async with session.post(f"{url}/v1/models/{name}:predict", data=BODY, headers=HEADERS) as response:
        await response.read()
        assert response.status == 200, response.status
        header = float(response.headers["X-Fnserve-Cold-Start"])
    return (time.perf_counter() - started) * 1000, header


async def breakdown(url: str, name: str, total_ms: float) -> dict[str, float | None]:
    """The newest cold start's split as the router recorded it, and what came after it: the answer."""
    for _ in range(100):  # the server's part arrives on the replica's pipe just after the answer, at worst
        newest = (await asyncio.to_thread(admin(url).call, "GET", f"/api/functions/{name}/stats"))["coldStarts"][0]
        if newest.get("serverMs") is not None:
            break
        await asyncio.sleep(0.01)
    split: dict[str, float | None] = {key: newest.get(key) for key, _ in STAGES if key != "answerMs"}
    split["answerMs"] = round(total_ms - newest["totalMs"], 1) if newest.get("totalMs") is not None else None
    return split


class Floor:
    """bench/cold_floor.py, driven over its pipes: one trial per line."""

    def __init__(self, model_dir: Path, function_dir: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.cold_floor", "--model-dir", str(model_dir),
                                         "--function-dir", str(function_dir)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the floor's warm parent did not start")

    def trial(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("trial\n")
        self.process.stdin.flush()
        result = json.loads(self.process.stdout.readline())
        if result.get("status") != 200:
            raise SystemExit(f"a floor trial failed: {result}")
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


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


async def burst(session: aiohttp.ClientSession, url: str, name: str, size: int) -> dict[str, int]:
    """The answers' statuses among ``size`` concurrent first requests to a function at zero."""
    await wait_until(lambda: at_zero(url, name), 60, f"{name} to scale to zero")

    async def one() -> int:
        async with session.post(f"{url}/v1/models/{name}:predict", data=BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    codes = await asyncio.gather(*(one() for _ in range(size)))
    return {str(code): codes.count(code) for code in sorted(set(codes))}


async def run(floor: Floor, urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    fork_url = urls["fork"]
    results: dict[str, Any] = {"floor": [], "fork": [], "spawn": [], "no_spare": [], "fork_header_ms": [],
                               "stages": [], "no_spare_stages": []}
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        for trial in range(args.trials):
            await wait_until(lambda: at_zero(fork_url, "cold"), 60, "cold to scale to zero")
            if trial % 2:  # the floor goes first every other trial: neither always follows the other
                results["floor"].append(await asyncio.to_thread(floor.trial))
            total, header = await cold_request(session, fork_url, "cold")
            results["fork"].append(round(total, 1))
            results["fork_header_ms"].append(header)
            results["stages"].append(await breakdown(fork_url, "cold", total))
            if not trial % 2:
                results["floor"].append(await asyncio.to_thread(floor.trial))
            total, _ = await cold_request(session, urls["no_spare"], "cold")
            results["no_spare"].append(round(total, 1))
            results["no_spare_stages"].append(await breakdown(urls["no_spare"], "cold", total))
            if trial < args.spawn_trials:
                results["spawn"].append(round((await cold_request(session, urls["spawn"], "cold"))[0], 1))
            if "baseline" in urls:
                results.setdefault("baseline", []).append(round((await cold_request(session, urls["baseline"], "cold"))[0], 1))
        results["step_seconds"] = [round(await step_to_desired(session, fork_url, "step", 8, 4), 2)
                                   for _ in range(args.steps)]
        results["bursts"] = [await burst(session, fork_url, "burst", 50) for _ in range(args.bursts)]
    return results


def _baseline_row(results: dict[str, Any], floor_p50: float) -> str:
    """The row of another checkout measured in the same run (--baseline), if one was."""
    if not results.get("baseline"):
        return ""
    p50, p99 = statistics.median(results["baseline"]), percentile(results["baseline"], 0.99)
    return (f"| {results['baseline_name']} (--baseline) | {p50:.1f} | {p99:.1f} | {p50 / floor_p50:.2f} | "
            f"{p99 / floor_p50:.2f} |\n")


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def summarize(results: dict[str, Any], trials: int) -> tuple[dict[str, Any], str]:
    floor_ms = [row["ms"] for row in results["floor"]]
    fork, spawn = results["fork"], results["spawn"]
    floor_p50 = statistics.median(floor_ms)
    summary: dict[str, Any] = {
        "floor": {"p50_ms": round(floor_p50, 1), "p99_ms": round(percentile(floor_ms, 0.99), 1)},
        "fork": {"p50_ms": round(statistics.median(fork), 1), "p99_ms": round(percentile(fork, 0.99), 1),
                 "header_p50_ms": round(statistics.median(results["fork_header_ms"]), 1)},
        "spawn": {"p50_ms": round(statistics.median(spawn), 1), "p99_ms": round(percentile(spawn, 0.99), 1)},
        "no_spare": {"p50_ms": round(statistics.median(results["no_spare"]), 1),
                     "p99_ms": round(percentile(results["no_spare"], 0.99), 1)},
        "stages_p50_ms": {key: median_of(results["stages"], key) for key, _ in STAGES},
        "no_spare_stages_p50_ms": {key: median_of(results["no_spare_stages"], key) for key, _ in STAGES},
        "floor_stages_p50_ms": {key: median_of(results["floor"], key) for key in ("fork_ms", "load_ms", "serve_ms",
                                                                                  "answer_ms")},
        "step_to_desired_s_median": round(statistics.median(results["step_seconds"]), 2),
        "bursts": results["bursts"],
        "burst_failures_total": sum(n for burst in results["bursts"] for code, n in burst.items() if code != "200"),
    }
    ratio_p50 = summary["fork"]["p50_ms"] / floor_p50
    ratio_p99 = summary["fork"]["p99_ms"] / floor_p50
    summary.update(p50_over_floor=round(ratio_p50, 2), p99_over_floor=round(ratio_p99, 2),
                   spawn_over_fork_p50=round(summary["spawn"]["p50_ms"] / summary["fork"]["p50_ms"], 1),
                   goal_met=ratio_p50 <= GOAL_P50 and ratio_p99 <= GOAL_P99)
    floor_stage = summary["floor_stages_p50_ms"]
    rows = "\n".join(f"| {label} | {_cell(summary['stages_p50_ms'][key])} | {_cell(summary['no_spare_stages_p50_ms'][key])} |"
                     for key, label in STAGES)
    fs, fk, sp, ns = summary["floor"], summary["fork"], summary["spawn"], summary["no_spare"]
    markdown = (
        "## Cold start from zero, against the floor (sentiment example, embedded backend)\n\n"
        f"{machine_line()}. {trials} trials, each after the function scaled to zero; the floor's trials "
        "interleaved with them (bench/cold_floor.py: a warm parent with kserve and onnxruntime imported forks, "
        "the child loads the same model.onnx and answers one request through uvicorn on a socket bound before "
        "the fork). fnserve is timed at the client, through the router.\n\n"
        "| | p50 (ms) | p99 (ms) | p50 / floor p50 | p99 / floor p50 |\n|---|---|---|---|---|\n"
        f"| floor | {fs['p50_ms']:.1f} | {fs['p99_ms']:.1f} | 1 | {fs['p99_ms'] / floor_p50:.2f} |\n"
        f"| fnserve, fork server | {fk['p50_ms']:.1f} | {fk['p99_ms']:.1f} | **{ratio_p50:.2f}** | **{ratio_p99:.2f}** |\n"
        f"| fnserve, fork server without its spare child | {ns['p50_ms']:.1f} | {ns['p99_ms']:.1f} | "
        f"{ns['p50_ms'] / floor_p50:.2f} | {ns['p99_ms'] / floor_p50:.2f} |\n"
        f"{_baseline_row(results, floor_p50)}"
        f"| fnserve, spawn fallback ({len(spawn)} trials) | {sp['p50_ms']:.0f} | {sp['p99_ms']:.0f} | "
        f"{sp['p50_ms'] / floor_p50:.1f} | {sp['p99_ms'] / floor_p50:.1f} |\n\n"
        f"Goal: p50 ≤ {GOAL_P50}× and p99 ≤ {GOAL_P99}× the floor's median — "
        f"{'met' if summary['goal_met'] else 'not met'}. X-Fnserve-Cold-Start (the wait in the router) p50 "
        f"{fk['header_p50_ms']:.1f} ms.\n\n"
        "Where fnserve's first request spends its time (medians of the trials; the replica reports its phases "
        "on its ready pipe, the router the rest):\n\n| stage | p50 (ms) | p50 without the spare (ms) |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"The floor's own stages (p50): fork {floor_stage['fork_ms']} ms, model load {floor_stage['load_ms']} ms, "
        f"server start {floor_stage['serve_ms']} ms, answer {floor_stage['answer_ms']} ms.\n\n"
        f"Step load 0 → 8 closed-loop clients (scaleTarget 2, maxReplicas 4): 4 ready replicas after "
        f"{summary['step_to_desired_s_median']:.2f} s (median of {len(results['step_seconds'])}; runs "
        f"{results['step_seconds']}).\n\n"
        f"Bursts of 50 concurrent first requests from zero (maxReplicas 3): answers by status "
        f"{results['bursts']}; {summary['burst_failures_total']} not 200.\n")
    return summary, markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--spawn-trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout of fnserve to time in the same trials")
    args = parser.parse_args()

    with workdir() as work:
        cold = prepare_function(work, "cold", minReplicas=0, stableWindow="1s", scaleToZeroGracePeriod="0s")
        step = prepare_function(work, "step", minReplicas=0, maxReplicas=4, scaleTarget=2, stableWindow="6s",
                                scaleToZeroGracePeriod="0s")
        burst_fn = prepare_function(work, "burst", minReplicas=0, maxReplicas=3, scaleTarget=4,
                                    stableWindow="2s", scaleToZeroGracePeriod="0s")
        model_dir = Path(model_dir_of(cold))
        floor = Floor(model_dir, cold)
        try:
            with contextlib.ExitStack() as platforms:
                urls = {"fork": platforms.enter_context(running_platform(work, "fork", [cold, step, burst_fn])),
                        "no_spare": platforms.enter_context(running_platform(
                            work, "nospare", [cold], env={"FNSERVE_FORK_SPARE_AFTER": "-1"})),
                        "spawn": platforms.enter_context(running_platform(
                            work, "spawn", [cold], env={"FNSERVE_FORKSERVER": "false"}))}
                if args.baseline:
                    urls["baseline"] = platforms.enter_context(running_platform(work, "baseline", [cold],
                                                                                code=args.baseline))
                results = asyncio.run(run(floor, urls, args))
                if args.baseline:
                    results["baseline_name"] = checkout_name(args.baseline)
        finally:
            floor.close()
    summary, markdown = summarize(results, args.trials)
    parameters = {**vars(args), "baseline": str(args.baseline) if args.baseline else None}
    write_results("cold_start", parameters, results, summary, markdown)


def model_dir_of(function: Path) -> str:
    """The model folder a prepared copy of the example points at (a file:// URI in its manifest)."""
    import yaml

    uri = yaml.safe_load((function / "function.yaml").read_text())["spec"]["model"]["uri"]
    return uri.removeprefix("file://")


if __name__ == "__main__":
    main()
