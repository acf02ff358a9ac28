"""Adaptive batching: the embeddings function (all-MiniLM-L6-v2) with batching on and off.

Two copies of functions/embeddings run side by side on one platform, one with the example's
``spec.batching`` and one without, one replica each (minReplicas = maxReplicas = 1, so the gain is one
replica's, not more replicas'). Closed-loop clients (each sends its next request when the last one is
answered) send one sentence per request, drawn from a fixed list of short texts of varied length, to
the replica directly, so router CPU does not blur the comparison. For each concurrency (1, 8, 32) the
two copies alternate, several rounds each; the table shows medians over rounds and the ratio of the
medians, both measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import (
    ROOT,
    admin,
    machine_line,
    percentile,
    running_platform,
    trained_run,
    workdir,
    write_results,
)

EMBEDDINGS = ROOT / "functions" / "embeddings"
TEXTS = [
    "How do I reset my password?", "Best pizza places near the station", "The delivery arrived two days late.",
    "Can I change the shipping address after ordering?", "cheap flights to lisbon in march",
    "My card was charged twice for the same order", "What is the return policy for electronics?",
    "Serverless inference scales to zero when idle", "The battery drains quickly after the last update",
    "recipe for a quick vegetarian curry", "Is the museum open on public holidays?",
    "Quarterly revenue grew by eight percent", "How many vacation days do new employees get?",
    "The printer on the third floor is jammed again", "weather tomorrow", "Translate this sentence into French",
]


def prepare(work: Path, name: str, run: str, batching: bool) -> Path:
    folder = work / name
    folder.mkdir()
    manifest = yaml.safe_load((EMBEDDINGS / "function.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"]["uri"] = run
    manifest["spec"]["auth"] = {"public": True}
    manifest["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 1}
    if not batching:
        manifest["spec"].pop("batching")
    (folder / "function.yaml").write_text(yaml.safe_dump(manifest))
    return folder


async def load(url: str, clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``: throughput, latency percentiles, batch sizes."""
    rng = random.Random(seed)
    bodies = [json.dumps({"instances": [t]}).encode() for t in TEXTS]
    latencies: list[float] = []
    rows: list[int] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client(stop: float) -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                async with session.post(url, data=rng.choice(bodies),
                                        headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        continue
                    rows.append(int(response.headers.get("x-fnserve-batch-rows", "1")))
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client(time.perf_counter() + 1.0) for _ in range(clients)))  # warm up
        latencies.clear()
        rows.clear()
        began = time.perf_counter()
        await asyncio.gather(*(client(began + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    return {"rps": len(latencies) / elapsed, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "mean_batch_rows": statistics.fmean(rows) if rows else 0.0, "errors": errors, "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with workdir() as work:
        run = trained_run(work, EMBEDDINGS)  # published through the function's own job
        functions = [prepare(work, "emb-batched", run, True), prepare(work, "emb-plain", run, False)]
        batching = yaml.safe_load((EMBEDDINGS / "function.yaml").read_text())["spec"]["batching"]
        with running_platform(work, "batching", functions) as router:
            urls = {mode: admin(router).function(f"emb-{mode}")["replicas"][0]["url"]
                    + f"/v1/models/emb-{mode}:predict" for mode in ("batched", "plain")}
            rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for clients in args.clients:
                for r in range(args.rounds):
                    for mode in (("batched", "plain") if r % 2 == 0 else ("plain", "batched")):
                        result = asyncio.run(load(urls[mode], clients, args.seconds, seed=r))
                        rounds.setdefault(str(clients), {}).setdefault(mode, []).append(result)
                        print(f"{clients:>3} clients {mode:>8}: {result['rps']:7.1f} req/s  p50 {result['p50']:7.1f} ms"
                              f"  p95 {result['p95']:7.1f} ms  rows/call {result['mean_batch_rows']:.1f}", flush=True)

    def median(clients: str, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[clients][mode])

    table, summary = [], {}
    for clients in map(str, args.clients):
        b, p = ({k: median(clients, mode, k) for k in ("rps", "p50", "p95", "mean_batch_rows")}
                for mode in ("batched", "plain"))
        ratio = b["rps"] / p["rps"]
        summary[clients] = {"batched": b, "plain": p, "throughput_ratio": round(ratio, 2),
                            "p95_ratio": round(b["p95"] / p["p95"], 2)}
        table.append(f"| {clients} | {p['rps']:.0f} | {b['rps']:.0f} | ×{ratio:.2f} | {p['p50']:.1f} / {p['p95']:.1f} "
                     f"| {b['p50']:.1f} / {b['p95']:.1f} | {b['mean_batch_rows']:.1f} |")
    top = summary[str(max(args.clients))]
    met = top["throughput_ratio"] >= 3 and top["p95_ratio"] <= 1
    markdown = (
        "## Adaptive batching (embeddings example, all-MiniLM-L6-v2, transformers runtime)\n\n"
        f"{machine_line()}, CPU only; client and replicas on the same machine, requests sent straight to the "
        f"replica. One sentence per request (16 short texts of 2–10 words), closed-loop clients, one replica per "
        f"mode, batching `{json.dumps(batching)}` vs off; medians of {args.rounds} alternating rounds of "
        f"{args.seconds:g} s per concurrency.\n\n"
        "| concurrent clients | req/s off | req/s on | throughput on/off | p50 / p95 off (ms) | p50 / p95 on (ms) "
        "| rows per model call (on) |\n|---|---|---|---|---|---|---|\n" + "\n".join(table) + "\n\n"
        f"At {max(args.clients)} clients batching gives ×{top['throughput_ratio']:.2f} the throughput with p95 "
        f"×{top['p95_ratio']:.2f} of unbatched (goal: ≥ ×3 and p95 not worse — {'met' if met else 'NOT met'}).\n")
    write_results("batching", {"clients": args.clients, "seconds": args.seconds, "rounds": args.rounds,
                               "batching": batching}, rounds, summary, markdown)


if __name__ == "__main__":
    main()
