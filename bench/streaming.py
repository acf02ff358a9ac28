"""Generative traffic: what the router adds to a token stream, how many tokens a second one replica
gives, whether one router holds 500 slow streams at once, and how far a token quota is overshot.

The function is functions/storyteller, trained by its own job (once per work folder; ≤ 3 min), serving
with minReplicas 1. Four parts, all through a real `fnserve up`:

1. **Added latency.** The same streamed chat (32 tokens, greedy, so every stream is the same text) sent
   alternately straight to the replica's `/openai/v1/chat/completions` and through the router, stream by
   stream. Per path: time to the first content chunk (TTFT) and the gaps between content chunks, as the
   client sees them. The router's cost is the difference of the medians — and, less noisily, the
   router's own CPU time per chunk it passed (its process's CPU clock over the routed rounds).
2. **Throughput.** Completion tokens per second through the router with 1, 4 and 16 concurrent streams.
3. **Holding.** 500 clients open a stream each at once (64 tokens) on a second deployment sized for
   them (2 replicas × containerConcurrency 256): every stream must end with `data: [DONE]`, none with
   an error; the most streams open at one moment and the router's memory are reported.
4. **Token quota.** A key with a daily token quota, 16 clients asking for completions until every one
   is refused: tokens charged in the ledger against the quota, and the bound docs/generative.md gives
   (requests in flight × their prompt tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import (
    ROOT,
    ROUTER_PIDS,
    admin,
    cpu_seconds,
    machine_line,
    percentile,
    run_async,
    running_platform,
    trained_run,
    workdir,
    write_results,
)

STORYTELLER = ROOT / "functions" / "storyteller"
PROMPT = "Once upon a time"
CHAT = "/openai/v1/chat/completions"


def prepare(work: Path, name: str, public: bool = True, **scaling: Any) -> Path:
    """A copy of the storyteller named ``name``, serving its trained run, with ``scaling``."""
    function = work / name
    shutil.copytree(STORYTELLER, function, ignore=shutil.ignore_patterns("__pycache__", "model", ".train-*"))
    manifest = yaml.safe_load((function / "function.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["auth"] = {"public": public}
    manifest["spec"]["model"]["uri"] = trained_run(work, STORYTELLER)
    manifest["spec"]["scaling"] = {**manifest["spec"].get("scaling", {}), **scaling}
    (function / "function.yaml").write_text(yaml.safe_dump(manifest))
    return function


def chat_body(name: str, max_tokens: int, **extra: Any) -> bytes:
    return json.dumps({"model": name, "stream": True, "max_tokens": max_tokens,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": PROMPT}], **extra}).encode()


@dataclass
class Stream:
    """One streamed answer as the client saw it."""

    ok: bool = False
    error: str = ""
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0


async def stream(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None,
                 opened: list[int] | None = None) -> Stream:
    """Send one streamed chat and read it event by event; ``opened`` counts streams open right now."""
    result = Stream()
    started = time.perf_counter()
    last: float | None = None
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})}) \
                as response:
            if response.status != 200:
                result.error = f"{response.status}: {(await response.text())[:200]}"
                return result
            if opened is not None:
                opened[0] += 1
                opened[1] = max(opened[1], opened[0])
            buffer, done = b"", False
            try:
                async for piece in response.content.iter_any():
                    now = time.perf_counter()
                    buffer += piece
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        if event == b"data: [DONE]":
                            done = True
                        elif event.startswith(b"data: {"):
                            data = json.loads(event[6:])
                            if data.get("error"):
                                result.error = str(data["error"])
                            elif data.get("usage"):
                                result.completion_tokens = data["usage"]["completion_tokens"]
                                result.prompt_tokens = data["usage"]["prompt_tokens"]
                            elif any((c.get("delta") or {}).get("content") for c in data.get("choices", ())):
                                result.chunks += 1
                                if last is None:
                                    result.ttft = now - started
                                else:
                                    result.gaps.append(now - last)
                                last = now
            finally:
                if opened is not None:
                    opened[0] -= 1
            result.ok = done and not result.error
            if not done and not result.error:
                result.error = "the stream ended without data: [DONE]"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def added_latency(targets: dict[str, str], router_pid: int, rounds: int, per_round: int,
                        max_tokens: int) -> dict[str, Any]:
    body = chat_body("storyteller", max_tokens, temperature=0)
    samples: dict[str, dict[str, list[float]]] = {name: {"ttft": [], "gap": []} for name in targets}
    router_cpu, router_chunks = 0.0, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for url in targets.values():  # warm both paths
            for _ in range(3):
                await stream(session, url, body)
        for _ in range(rounds):
            # one stream each way in turn: the replica's own pace drifts over seconds, and alternating
            # stream by stream puts both paths on the same drift
            for _ in range(per_round):
                for name, url in targets.items():
                    cpu = cpu_seconds(router_pid)
                    result = await stream(session, url, body)
                    assert result.ok and result.ttft is not None, result.error
                    samples[name]["ttft"].append(result.ttft * 1000)
                    samples[name]["gap"].extend(g * 1000 for g in result.gaps)
                    if name == "router":
                        router_cpu += cpu_seconds(router_pid) - cpu
                        router_chunks += result.chunks + 2  # the content chunks, the usage chunk, [DONE]
    out: dict[str, Any] = {}
    for name, values in samples.items():
        out[name] = {"ttft_p50_ms": statistics.median(values["ttft"]),
                     "ttft_p95_ms": percentile(values["ttft"], 0.95),
                     "gap_p50_ms": statistics.median(values["gap"]), "gap_mean_ms": statistics.fmean(values["gap"]),
                     "streams": len(values["ttft"]), "gaps": len(values["gap"])}
    out["router_cpu_us_per_chunk"] = router_cpu / max(1, router_chunks) * 1e6
    return out


async def throughput(url: str, concurrency: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    tokens, streams, errors = 0, 0, 0
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal tokens, streams, errors
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            while time.perf_counter() < deadline:
                result = await stream(session, url, chat_body("storyteller", max_tokens, temperature=0.8,
                                                              seed=seed + streams))
                if result.ok:
                    tokens += result.completion_tokens
                    streams += 1
                else:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(1000 * i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "tokens_per_s": tokens / elapsed, "streams": streams, "errors": errors,
            "seconds": elapsed}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def hold(url: str, router_pid: int, clients: int, max_tokens: int) -> dict[str, Any]:
    opened = [0, 0]
    peak_rss = [rss_mb(router_pid)]
    connector = aiohttp.TCPConnector(limit=0)

    async def watch_memory() -> None:
        while True:
            peak_rss[0] = max(peak_rss[0], rss_mb(router_pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.ensure_future(watch_memory())
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        results = await asyncio.gather(*(stream(session, url, chat_body("storyteller-hold", max_tokens,
                                                                        temperature=0.8, seed=i), opened=opened)
                                         for i in range(clients)))
    watcher.cancel()
    errors = [r.error for r in results if not r.ok]
    return {"clients": clients, "completed": sum(r.ok for r in results), "errors": len(errors),
            "first_errors": errors[:5], "most_open_at_once": opened[1], "seconds": time.perf_counter() - started,
            "ttft_p50_ms": statistics.median([r.ttft * 1000 for r in results if r.ttft is not None] or [0]),
            "tokens": sum(r.completion_tokens for r in results), "router_peak_rss_mb": round(peak_rss[0], 1)}


async def token_quota(router: str, name: str, quota: int, clients: int, max_tokens: int) -> dict[str, Any]:
    api = admin(router)
    created = api.create_key("bench-tokens", scopes=[f"invoke:{name}"], limits={"tpd": quota})
    headers = {"Authorization": f"Bearer {created['token']}", "Content-Type": "application/json"}
    body = json.dumps({"model": name, "prompt": PROMPT, "max_tokens": max_tokens}).encode()
    told, refused, prompts = 0, 0, []

    async def worker() -> None:
        nonlocal told, refused
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.post(f"{router}/openai/v1/completions", data=body, headers=headers) as response:
                    answer = await response.json()
                    if response.status == 429:
                        refused += 1
                        return
                    assert response.status == 200, answer
                    told += answer["usage"]["total_tokens"]
                    prompts.append(answer["usage"]["prompt_tokens"])

    await asyncio.gather(*(worker() for _ in range(clients)))
    usage = [r for r in api.usage(key=created["key"]["id"])["usage"] if r["function"] == name]
    charged = sum(r["promptTokens"] + r["completionTokens"] for r in usage)
    bound = clients * max(prompts or [0])
    return {"quota": quota, "clients": clients, "max_tokens": max_tokens, "charged": charged, "told": told,
            "overshoot": charged - quota, "overshoot_pct": round((charged - quota) / quota * 100, 2),
            "bound": bound, "within_bound": charged - quota <= bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=15.0, help="per throughput level")
    parser.add_argument("--hold", type=int, default=500, help="concurrent slow streams")
    args = parser.parse_args()
    with workdir() as work:
        teller = prepare(work, "storyteller", minReplicas=1, maxReplicas=1, containerConcurrency=16)
        holder = prepare(work, "storyteller-hold", minReplicas=2, maxReplicas=2, containerConcurrency=256)
        private = prepare(work, "storyteller-keyed", public=False, minReplicas=1, maxReplicas=1)
        with running_platform(work, "streaming", [teller, holder, private]) as router:
            pid = ROUTER_PIDS[router]
            replica = admin(router).function("storyteller")["replicas"][0]["url"]
            latency = run_async(added_latency({"direct": replica + CHAT, "router": router + CHAT}, pid,
                                              args.rounds, args.per_round, 32))
            levels = [run_async(throughput(router + CHAT, c, args.seconds, 64)) for c in (1, 4, 16)]
            held = run_async(hold(router + CHAT, pid, args.hold, 64))
            quota = run_async(token_quota(router, "storyteller-keyed", 3000, 16, 32))
    direct, routed = latency["direct"], latency["router"]
    summary = {
        "added_ttft_p50_ms": round(routed["ttft_p50_ms"] - direct["ttft_p50_ms"], 3),
        "added_gap_p50_ms": round(routed["gap_p50_ms"] - direct["gap_p50_ms"], 3),
        "router_cpu_us_per_chunk": round(latency["router_cpu_us_per_chunk"], 1),
        "tokens_per_s": {str(level["concurrency"]): round(level["tokens_per_s"], 1) for level in levels},
        "hold": {k: held[k] for k in ("clients", "completed", "errors", "most_open_at_once", "router_peak_rss_mb")},
        "token_quota": quota,
    }
    rows = "\n".join(f"| {name} | {v['ttft_p50_ms']:.2f} | {v['ttft_p95_ms']:.2f} | {v['gap_p50_ms']:.3f} | "
                     f"{v['gap_mean_ms']:.3f} | {v['streams']} |" for name, v in (("direct to replica", direct),
                                                                               ("through the router", routed)))
    level_rows = "\n".join(f"| {lv['concurrency']} | {lv['tokens_per_s']:.0f} | {lv['streams']} | {lv['errors']} |"
                           for lv in levels)
    markdown = (
        f"## Streaming (generative functions)\n\n"
        f"functions/storyteller (trained by its job), streamed chat over `/openai/v1/chat/completions`, "
        f"{machine_line()}; client, router and replicas on the same machine. {args.rounds * args.per_round} "
        f"streams of 32 tokens per path, alternating stream by stream.\n\n"
        f"| path | TTFT p50 ms | TTFT p95 ms | chunk gap p50 ms | chunk gap mean ms | streams |\n"
        f"|---|---|---|---|---|---|\n{rows}\n\n"
        f"The router adds **{summary['added_ttft_p50_ms']:+.2f} ms** to the time to first token (p50) and "
        f"**{summary['added_gap_p50_ms']:+.3f} ms** per chunk (p50 gap); its own CPU per chunk passed is "
        f"**{summary['router_cpu_us_per_chunk']:.0f} µs**.\n\n"
        f"| concurrent streams | tokens/s (through the router) | streams | errors |\n|---|---|---|---|\n"
        f"{level_rows}\n\n"
        f"**{held['clients']} concurrent slow streams** through one router (2 replicas × containerConcurrency "
        f"256, 64 tokens each): {held['completed']} completed, {held['errors']} errors, at most "
        f"{held['most_open_at_once']} open at once, {held['seconds']:.0f} s in all; router peak RSS "
        f"{held['router_peak_rss_mb']:.0f} MB.\n\n"
        f"**Token quota** of {quota['quota']} tokens a day, {quota['clients']} clients asking for "
        f"{quota['max_tokens']} tokens each until refused: {quota['charged']} charged "
        f"({quota['overshoot_pct']:+.2f}%), the documented bound being +{quota['bound']} tokens (clients × "
        f"prompt tokens): {'within' if quota['within_bound'] else '**beyond**'} it.\n")
    write_results("streaming", vars(args), {"latency": latency, "throughput": levels, "hold": held,
                                            "token_quota": quota}, summary, markdown)


if __name__ == "__main__":
    main()
