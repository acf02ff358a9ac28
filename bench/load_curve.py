"""Latency against offered load: the same V1 request sent open loop at fixed rates, straight to a
replica and through the router, up to where each path stops keeping up.

Open loop: requests start on a schedule (Poisson arrivals at R requests/s by default) whether or not
earlier ones have answered, and latency counts from the scheduled start, so an overloaded server
shows up as latency and lost throughput rather than as a client that politely slows down. At each
rate the two paths alternate for a few rounds on identical arrival schedules; figures are medians
over rounds. A path keeps up at a rate while it completes ≥ 90% of the offered requests within the
point and its p99 stays ≤ 1 s; it is not offered higher rates once it has failed, and the run ends
when both have (or when --budget seconds have gone by). Client (uvloop), router and replica share
this machine's cores, so the client's own CPU is part of what saturates: absolute figures are floors.
Each point also records the CPU (in cores) the client, the router and the replica process used, which
shows where the limit is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import aiohttp

from bench.common import (
    RESULTS,
    ROUTER_PIDS,
    admin,
    arrival_times,
    cpu_seconds,
    machine_line,
    open_loop,
    percentile,
    prepare_function,
    run_async,
    running_platform,
    workdir,
    write_results,
)

PATHS = ("router", "direct")
PLOT = "latency_vs_load.png"


def point(result: dict[str, Any], rate: float, seconds: float, cpu: dict[str, float]) -> dict[str, float]:
    """One open-loop run at one rate, reduced to the figures the curve needs."""
    records = result["records"]
    ok = [r for r in records if r["status"] == 200]
    latencies = [r["latency_ms"] for r in records]  # failures count at the time they were given up
    lags = [r["lag"] for r in records if r["lag"] is not None]
    return {
        "sent": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        # answers completed inside the point's window, per second of window: the served rate
        "achieved_rps": sum(1 for r in ok if r["done"] <= seconds) / seconds,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": percentile(latencies, 0.95) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 0.99) if latencies else float("nan"),
        "client_lag_p99_ms": percentile(lags, 0.99) * 1000 if lags else 0.0,
        "offered_rps": rate,
        **{f"{name}_cpu_cores": round(used, 3) for name, used in cpu.items()},
    }


class CpuMeter:
    """CPU time of the client (this process), the router and the replica, as cores used over a span."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        now = {"client": time.process_time(), "wall": time.perf_counter()}
        for name, pid in self.pids.items():
            try:
                now[name] = cpu_seconds(pid)
            except OSError:
                now[name] = float("nan")
        return now

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["wall"] - before["wall"]
        return {name: (after[name] - before[name]) / wall for name in before if name != "wall"}


def keeps_up(p: dict[str, float], rate: float, min_share: float, max_p99_ms: float) -> bool:
    return p["achieved_rps"] >= min_share * rate and p["p99_ms"] <= max_p99_ms


async def measure(targets: dict[str, str], meter: CpuMeter, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    active = list(targets)
    deadline = time.monotonic() + args.budget
    connector = aiohttp.TCPConnector(limit=args.connections, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in targets.values():  # warm both paths and the client's connection pool
            await open_loop(session, url, arrival_times(200, 1.0, "uniform"), drain=2.0)
        for rate in args.rates:
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in active}
            for r in range(args.rounds):
                schedule = arrival_times(rate, args.seconds, args.arrivals, seed=r * 100_003 + int(rate))
                order = active if r % 2 == 0 else active[::-1]
                for name in order:
                    before = meter.read()
                    result = await open_loop(session, targets[name], schedule, drain=args.drain,
                                             timeout=args.drain + args.seconds)
                    rounds[name].append(point(result, rate, args.seconds, meter.cores(before, meter.read())))
                    await asyncio.sleep(args.pause)  # let a backlog from an overloaded point clear
            for name in list(active):
                med = {k: round(statistics.median(p[k] for p in rounds[name]), 3) for k in rounds[name][0]}
                med["keeps_up"] = keeps_up(med, rate, args.min_share, args.max_p99_ms)
                med["rounds"] = rounds[name]
                results[name].append(med)
                print(f"{rate:>6g} req/s {name:>6}: achieved {med['achieved_rps']:7.1f}  p50 {med['p50_ms']:8.2f}  "
                      f"p95 {med['p95_ms']:8.2f}  p99 {med['p99_ms']:8.2f} ms  failed {med['failed']:g}  "
                      f"client lag p99 {med['client_lag_p99_ms']:.1f} ms  cores client/router/replica "
                      f"{med['client_cpu_cores']:.2f}/{med['router_cpu_cores']:.2f}/{med['replica_cpu_cores']:.2f}  "
                      f"{'ok' if med['keeps_up'] else 'SATURATED'}", flush=True)
                if not med["keeps_up"]:
                    active.remove(name)
            if not active:
                break
            if time.monotonic() > deadline:
                print(f"time budget of {args.budget:g} s spent: no higher rates", flush=True)
                break
    return results


def sustainable(points: list[dict[str, Any]]) -> tuple[float, bool]:
    """The highest throughput achieved at a rate the path kept up with, and whether it ever failed
    (False: the path was never saturated, so the figure is only a lower bound)."""
    kept = [p["achieved_rps"] for p in points if p["keeps_up"]]
    return (max(kept) if kept else 0.0), any(not p["keeps_up"] for p in points)


def plot(results: dict[str, list[dict[str, Any]]], title: str, path: Any, max_p99_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"p50_ms": "tab:blue", "p95_ms": "tab:orange", "p99_ms": "tab:red"}
    styles = {"router": "-", "direct": "--"}
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for name in PATHS:
        points = results.get(name, [])
        x = [p["offered_rps"] for p in points]
        for key, colour in colours.items():
            y = [p[key] for p in points]
            ax.plot(x, y, styles[name], color=colour, marker="o", markersize=4,
                    label=f"{name} {key.removesuffix('_ms')}")
            saturated = [(a, b) for a, b, p in zip(x, y, points, strict=True) if not p["keeps_up"]]
            if saturated:
                ax.plot(*zip(*saturated, strict=True), "x", color=colour, markersize=9, markeredgewidth=2)
    ax.axhline(max_p99_ms, color="grey", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[0], max_p99_ms * 1.08, f" p99 limit {max_p99_ms:g} ms", color="grey", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncol=2, fontsize=8, title="solid: router · dashed: direct · ×: not keeping up", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[100, 300, 600, 900, 1100, 1300, 1500, 1800], help="offered rates, requests/s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each point")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="no higher rate is started after this many seconds of measuring")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    parser.add_argument("--drain", type=float, default=2.0, help="wait for stragglers after a point (s)")
    parser.add_argument("--pause", type=float, default=0.5, help="quiet time between points (s)")
    parser.add_argument("--connections", type=int, default=256, help="client connection pool size")
    parser.add_argument("--min-share", type=float, default=0.9, help="keeps up: achieved ≥ this × offered")
    parser.add_argument("--max-p99-ms", type=float, default=1000.0, help="keeps up: p99 ≤ this")
    args = parser.parse_args()

    began = time.monotonic()
    with workdir() as work:
        function = prepare_function(work, "sentiment", minReplicas=1, maxReplicas=1)
        with running_platform(work, "load", [function]) as router:
            replica = admin(router).function("sentiment")["replicas"][0]
            path = "/v1/models/sentiment:predict"
            meter = CpuMeter({"router": ROUTER_PIDS[router], "replica": replica["pid"]})
            results = run_async(measure({"router": router + path, "direct": replica["url"] + path}, meter, args))

    routed, direct = results["router"], results["direct"]
    (r_max, r_sat), (d_max, d_sat) = sustainable(routed), sustainable(direct)
    lightest = min(args.rates)
    light = {name: next(p for p in results[name] if p["offered_rps"] == lightest) for name in PATHS}
    summary = {
        "max_sustainable_rps": {"router": round(r_max, 1), "direct": round(d_max, 1)},
        "saturated": {"router": r_sat, "direct": d_sat},
        "saturated_at_rps": {name: next((p["offered_rps"] for p in results[name] if not p["keeps_up"]), None)
                             for name in PATHS},
        "peak_achieved_rps": {name: round(max(p["achieved_rps"] for p in results[name]), 1) for name in PATHS},
        "max_throughput_ratio": round(r_max / d_max, 3) if d_max else None,
        "peak_throughput_ratio": round(max(p["achieved_rps"] for p in routed)
                                       / max(p["achieved_rps"] for p in direct), 3),
        "lightest_rate": lightest,
        "added_p50_ms_lightest": round(light["router"]["p50_ms"] - light["direct"]["p50_ms"], 3),
        "added_p99_ms_lightest": round(light["router"]["p99_ms"] - light["direct"]["p99_ms"], 3),
    }
    date = time.strftime("%Y-%m-%d", time.gmtime())
    plot(results, f"fnserve: latency vs offered load, sentiment V1 predict (router vs direct)\n"
                  f"{machine_line()} · {date}", RESULTS / PLOT, args.max_p99_ms)

    def row(rate: float) -> str:
        cells = [f"{rate:g}"]
        for name in PATHS:
            p = next((p for p in results[name] if p["offered_rps"] == rate), None)
            cpu = (f"{p['client_cpu_cores']:.2f} / {p['router_cpu_cores']:.2f} / {p['replica_cpu_cores']:.2f}"
                   if p is not None and name == "router" else
                   f"{p['client_cpu_cores']:.2f} / {p['replica_cpu_cores']:.2f}" if p is not None else "–")
            cells += (["–"] * 3 if p is None else
                      [f"{p['achieved_rps']:.0f}{'' if p['keeps_up'] else ' ✗'}",
                       f"{p['p50_ms']:.2f} / {p['p95_ms']:.2f} / {p['p99_ms']:.2f}", cpu])
        return "| " + " | ".join(cells) + " |"

    measured = sorted({p["offered_rps"] for name in PATHS for p in results[name]})
    top_r, top_d = routed[-1], direct[-1]
    cpu_line = (
        f"CPU at the last rate offered to each path: through the router ({top_r['offered_rps']:g} req/s) client "
        f"{top_r['client_cpu_cores']:.2f} + router {top_r['router_cpu_cores']:.2f} + replica "
        f"{top_r['replica_cpu_cores']:.2f} = {top_r['client_cpu_cores'] + top_r['router_cpu_cores'] + top_r['replica_cpu_cores']:.2f} "
        f"cores; direct ({top_d['offered_rps']:g} req/s) client {top_d['client_cpu_cores']:.2f} + replica "
        f"{top_d['replica_cpu_cores']:.2f} cores, of {os.cpu_count()}. The replica is one process (at most one core).")
    stopped = ("" if all(summary["saturated"].values()) else
               " A path marked *never saturated* kept up at every rate offered to it (see --rates, --budget).")

    def bound(value: float, saturated: bool) -> str:
        return f"{value:.0f}" if saturated else f"≥ {value:.0f} (never saturated)"

    markdown = (
        "## Latency vs offered load (open loop, sentiment example)\n\n"
        f"{machine_line()}, {date}; client, router and one replica (minReplicas = maxReplicas = 1) on the same "
        f"machine. {args.arrivals.capitalize()} arrivals at each offered rate for {args.seconds:g} s, router and "
        f"direct alternating on the same schedule; medians of {args.rounds} rounds. Latency counts from each "
        "request's scheduled start; *achieved* is answers completed within the point per second. A path keeps up "
        f"while achieved ≥ {args.min_share:.0%} of offered and p99 ≤ {args.max_p99_ms:g} ms (✗: it did not; it "
        "is offered no higher rate).\n\n"
        "| offered (req/s) | router: achieved | router: p50 / p95 / p99 (ms) | router: CPU cores client / router / "
        "replica | direct: achieved | direct: p50 / p95 / p99 (ms) | direct: CPU cores client / replica |\n"
        "|---|---|---|---|---|---|---|\n"
        + "\n".join(row(rate) for rate in measured) + "\n\n"
        f"![Latency percentiles vs offered load, router (solid) and direct (dashed)]({PLOT})\n\n"
        f"Max sustainable throughput: router {bound(r_max, r_sat)} req/s, direct {bound(d_max, d_sat)} req/s "
        f"(router/direct ×{summary['max_throughput_ratio']}); peak achieved at any rate: router "
        f"{summary['peak_achieved_rps']['router']:.0f}, direct {summary['peak_achieved_rps']['direct']:.0f} req/s. "
        f"At {lightest:g} req/s the router adds {summary['added_p50_ms_lightest']:.2f} ms at p50 and "
        f"{summary['added_p99_ms_lightest']:.2f} ms at p99.{stopped}\n\n{cpu_line}\n")
    write_results("load_curve", vars(args), results, summary, markdown)
    print(f"load_curve: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
