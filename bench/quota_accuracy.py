"""How exactly the router enforces per-key limits: a rate (GCRA), a concurrency limit and a daily
quota, each on its own key created through the admin API, driven past the limit.

- rate: rps R, burst B; open loop at several times R (uniform arrivals) for T s. GCRA admits B at
  once, then one every 1/R s, so the 200s should be B + R × (span of the arrivals); every 429 must
  carry Retry-After, every answer the RateLimit headers.
- concurrency: C; N > C closed-loop clients for T s. The 200s' client-side intervals are swept for
  the most that overlapped. Client timestamps bracket the router's (a request reaches the router
  after the client sent it, and the router frees its slot before the client has read the answer,
  later still when the client's loop is busy with the other clients' 429s), so that sweep is an
  upper bound. The router's own view is sampled alongside: the replica's in-flight count
  (`outstanding` in GET /api/functions/sentiment, polled every few ms), which the admission slot
  strictly contains, so it may never exceed C.
- daily: D; 1.5 × D sequential requests; exactly D should pass.

Each check runs for a few rounds on a fresh key; figures are medians over rounds (min/max where a
single violation matters). Client (uvloop), router and replica share this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from bench.common import (
    BODY,
    HEADERS,
    admin,
    arrival_times,
    machine_line,
    open_loop,
    prepare_function,
    run_async,
    running_platform,
    workdir,
    write_results,
)

PREDICT = "/v1/models/sentiment:predict"
RATE_HEADERS = ("Retry-After", "RateLimit", "RateLimit-Policy")


def limit_named(body: str | None) -> str | None:
    try:
        return json.loads(body or "").get("limit")
    except (ValueError, AttributeError):
        return None


async def rate_round(session: aiohttp.ClientSession, url: str, token: str, args: argparse.Namespace) -> dict:
    schedule = arrival_times(args.rate_offered, args.rate_seconds, "uniform")
    result = await open_loop(session, url, schedule, headers={**HEADERS, "Authorization": f"Bearer {token}"},
                             keep_headers=RATE_HEADERS, keep_error_body=True, drain=2.0)
    records = result["records"]
    sent_at = [r["at"] + r["lag"] for r in records if r["lag"] is not None]
    span = max(sent_at) - min(sent_at)
    ok = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] == 429]
    expected = args.burst + args.rps * span
    tail = [r for r in ok if r["at"] >= args.rate_seconds / 2]  # past the burst: the steady rate
    return {
        "sent": len(records), "ok": len(ok), "refused": len(refused),
        "other": len(records) - len(ok) - len(refused),
        "span_s": round(span, 4), "expected": round(expected, 2), "ratio": round(len(ok) / expected, 4),
        "steady_rps": round(len(tail) / (args.rate_seconds / 2), 2),
        "retry_after_present": sum("Retry-After" in r["headers"] for r in refused),
        "retry_after_values": sorted({r["headers"].get("Retry-After") for r in refused} - {None}),
        "ratelimit_present": sum("RateLimit" in r["headers"] and "RateLimit-Policy" in r["headers"]
                                 for r in ok + refused),
        "refused_as_rate": sum(limit_named(r.get("body")) == "rate" for r in refused),
        "client_lag_max_ms": round(max((r["lag"] or 0) for r in records) * 1000, 2),
    }


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same instant)."""
    events = sorted([(s, 1) for s, e in intervals if e > s] + [(e, -1) for s, e in intervals if e > s])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def time_over(intervals: list[tuple[float, float]], limit: int, total: float) -> float:
    """Share of ``total`` seconds during which more than ``limit`` intervals were open."""
    events = sorted([(s, 1) for s, e in intervals] + [(e, -1) for s, e in intervals])
    over = current = 0
    last = events[0][0] if events else 0.0
    for t, step in events:
        if current > limit:
            over += t - last
        current, last = current + step, t
    return over / total if total else 0.0


async def concurrency_round(session: aiohttp.ClientSession, url: str, token: str,
                            args: argparse.Namespace) -> dict:
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    body = json.dumps({"instances": ["what a wonderful film"] * args.instances}).encode()
    done: list[tuple[float, float, int, dict[str, str], str | None]] = []
    stop = time.perf_counter() + args.concurrency_seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                content = await response.read()
                text = content.decode(errors="replace") if response.status != 200 else None
                done.append((started, time.perf_counter(), response.status, dict(response.headers), text))

    samples: list[int] = []

    async def poll() -> None:
        status_url = url.split("/v1/")[0] + "/api/functions/sentiment"
        admin_headers = admin(url.split("/v1/")[0]).headers
        while time.perf_counter() < stop:
            async with session.get(status_url, headers=admin_headers) as response:
                replicas = (await response.json())["replicas"]
            samples.append(sum(r["outstanding"] for r in replicas))
            await asyncio.sleep(args.poll_ms / 1000)

    began = time.perf_counter()
    await asyncio.gather(poll(), *(client() for _ in range(args.clients)))
    elapsed = time.perf_counter() - began
    ok = [(s, e) for s, e, status, _, _ in done if status == 200]
    refused = [(s, e, h, t) for s, e, status, h, t in done if status == 429]
    return {
        "requests": len(done), "ok": len(ok), "refused": len(refused),
        "other": len(done) - len(ok) - len(refused),
        "refused_share": round(len(refused) / len(done), 4) if done else 0.0,
        "ok_rps": round(len(ok) / elapsed, 1),
        "max_in_flight_client": max_overlap(ok),
        "time_over_limit_client": round(time_over(ok, args.concurrency, elapsed), 4),
        "router_samples": len(samples),
        "max_in_flight_router": max(samples, default=0),
        "router_samples_at_limit": round(samples.count(args.concurrency) / len(samples), 4) if samples else 0.0,
        "router_samples_over_limit": sum(n > args.concurrency for n in samples),
        "ok_latency_p50_ms": round(statistics.median(e - s for s, e in ok) * 1000, 2) if ok else None,
        "refusal_rtt_p50_ms": round(statistics.median(e - s for s, e, _, _ in refused) * 1000, 3) if refused else None,
        "retry_after_present": sum("Retry-After" in h for _, _, h, _ in refused),
        "refused_as_concurrency": sum(limit_named(t) == "concurrency" for _, _, _, t in refused),
    }


async def daily_round(session: aiohttp.ClientSession, url: str, token: str, args: argparse.Namespace) -> dict:
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    statuses, retry_after, limits = [], [], []
    for _ in range(args.daily_requests):
        async with session.post(url, data=BODY, headers=headers) as response:
            content = await response.read()
            statuses.append(response.status)
            if response.status == 429:
                retry_after.append(response.headers.get("Retry-After"))
                limits.append(limit_named(content.decode(errors="replace")))
    ok = statuses.count(200)
    first_refused = statuses.index(429) if 429 in statuses else None
    seconds_to_midnight = 86400 - time.time() % 86400
    return {
        "sent": len(statuses), "ok": ok, "refused": statuses.count(429),
        "other": len(statuses) - ok - statuses.count(429),
        "first_refused_at": first_refused,  # index of the first 429: D when the quota is exact
        "ok_after_first_refusal": statuses[first_refused:].count(200) if first_refused is not None else 0,
        "retry_after_present": sum(v is not None for v in retry_after),
        "retry_after_to_midnight_max_error_s": round(max((abs(float(v) - seconds_to_midnight) for v in retry_after
                                                          if v is not None), default=0.0), 1),
        "refused_as_daily": limits.count("daily"),
    }


async def measure(router: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    url = router + PREDICT
    out: dict[str, list[dict[str, Any]]] = {"rate": [], "concurrency": [], "daily": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.connections)) as session:
        warm = admin(router).create_key("bench-warm")["token"]
        await open_loop(session, url, arrival_times(200, 1.0), headers={**HEADERS, "Authorization": f"Bearer {warm}"})
        for r in range(args.rounds):
            token = admin(router).create_key(f"bench-rate-{r}", limits={"rps": args.rps, "burst": args.burst})["token"]
            out["rate"].append(await rate_round(session, url, token, args))
            await asyncio.sleep(0.5)
            token = admin(router).create_key(f"bench-concurrency-{r}", limits={"concurrency": args.concurrency})["token"]
            out["concurrency"].append(await concurrency_round(session, url, token, args))
            await asyncio.sleep(0.5)
            token = admin(router).create_key(f"bench-daily-{r}", limits={"daily": args.daily})["token"]
            out["daily"].append(await daily_round(session, url, token, args))
            for name in out:
                print(f"round {r} {name}: {out[name][-1]}", flush=True)
    return out


def median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--rate-offered", type=float, default=200.0, help="open-loop arrivals/s against the rate")
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients against the concurrency limit")
    parser.add_argument("--concurrency-seconds", type=float, default=5.0)
    parser.add_argument("--instances", type=int, default=16,
                        help="sentences per request in the concurrency check (longer requests, clearer overlap)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="how often the router's in-flight count is read")
    parser.add_argument("--daily", type=int, default=100)
    parser.add_argument("--daily-requests", type=int, default=150)
    parser.add_argument("--connections", type=int, default=256)
    args = parser.parse_args()

    began = time.monotonic()
    with workdir() as work:
        function = prepare_function(work, "sentiment", public=False, minReplicas=1, maxReplicas=1)
        with running_platform(work, "quota", [function]) as router:
            results = run_async(measure(router, args))

    rate, conc, daily = results["rate"], results["concurrency"], results["daily"]
    rate_ok, rate_expected = median(rate, "ok"), median(rate, "expected")
    rate_ratio = median(rate, "ratio")
    conc_router, conc_client = max(r["max_in_flight_router"] for r in conc), max(r["max_in_flight_client"] for r in conc)
    daily_ok = median(daily, "ok")
    all_429s = {name: sum(r["refused"] for r in rounds) for name, rounds in results.items()}
    with_retry_after = {name: sum(r["retry_after_present"] for r in rounds) for name, rounds in results.items()}
    summary = {
        "rate": {"rps": args.rps, "burst": args.burst, "offered_rps": args.rate_offered,
                 "expected_ok": rate_expected, "measured_ok": rate_ok, "ratio": rate_ratio,
                 "error_pct": round((rate_ratio - 1) * 100, 2), "steady_rps": median(rate, "steady_rps"),
                 "retry_after_on_every_429": with_retry_after["rate"] == all_429s["rate"],
                 "ratelimit_on_every_answer": all(r["ratelimit_present"] == r["ok"] + r["refused"] for r in rate)},
        "concurrency": {"limit": args.concurrency, "clients": args.clients,
                        "max_in_flight_router": conc_router, "max_in_flight_client": conc_client,
                        "router_samples": sum(r["router_samples"] for r in conc),
                        "router_samples_over_limit": sum(r["router_samples_over_limit"] for r in conc),
                        "router_share_at_limit": median(conc, "router_samples_at_limit"),
                        "error_pct": round((conc_router - args.concurrency) / args.concurrency * 100, 2),
                        "refused_share": median(conc, "refused_share"),
                        "ok_rps": median(conc, "ok_rps"),
                        "time_over_limit_client": median(conc, "time_over_limit_client"),
                        "retry_after_on_every_429": with_retry_after["concurrency"] == all_429s["concurrency"]},
        "daily": {"limit": args.daily, "sent": args.daily_requests, "measured_ok": daily_ok,
                  "exact_every_round": all(r["ok"] == args.daily and r["ok_after_first_refusal"] == 0 for r in daily),
                  "error_pct": round((daily_ok - args.daily) / args.daily * 100, 2),
                  "retry_after_on_every_429": with_retry_after["daily"] == all_429s["daily"]},
        "retry_after_on_every_429": with_retry_after == all_429s,
        "unexpected_statuses": sum(r["other"] for rounds in results.values() for r in rounds),
    }
    s_rate, s_conc, s_daily = summary["rate"], summary["concurrency"], summary["daily"]

    def yes(flag: bool) -> str:
        return "yes" if flag else "**no**"

    markdown = (
        "## Limit accuracy: rate, concurrency, daily quota (sentiment example, API keys)\n\n"
        f"{machine_line()}, {time.strftime('%Y-%m-%d', time.gmtime())}; client, router (in-memory limiter) and "
        f"one replica on the same machine; one fresh key per check and round, created through `POST /api/keys`; "
        f"medians of {args.rounds} rounds (concurrency: the worst round).\n\n"
        "| limit | load | expected | measured | error | Retry-After on every 429 |\n|---|---|---|---|---|---|\n"
        f"| rate {args.rps:g}/s, burst {args.burst} | {args.rate_offered:g} req/s open loop (uniform) for "
        f"{args.rate_seconds:g} s | {rate_expected:.1f} OK (burst + rate × {median(rate, 'span_s'):.2f} s) | "
        f"{rate_ok:.0f} OK (×{rate_ratio:.3f}), steady {s_rate['steady_rps']:.1f}/s | {s_rate['error_pct']:+.2f}% | "
        f"{yes(s_rate['retry_after_on_every_429'])} |\n"
        f"| concurrency {args.concurrency} | {args.clients} closed-loop clients for {args.concurrency_seconds:g} s, "
        f"{args.instances} sentences per request | ≤ {args.concurrency} in flight | {conc_router} max in flight "
        f"in the router ({s_conc['router_samples']} samples, {s_conc['router_share_at_limit']:.0%} at the limit); "
        f"client view {conc_client}; {s_conc['refused_share']:.0%} of requests refused, "
        f"{s_conc['ok_rps']:.0f} OK/s | "
        f"{s_conc['error_pct']:+.0f}% | {yes(s_conc['retry_after_on_every_429'])} |\n"
        f"| daily {args.daily} | {args.daily_requests} sequential requests | {args.daily} OK | {daily_ok:.0f} OK"
        f"{' in every round' if s_daily['exact_every_round'] else ''} | {s_daily['error_pct']:+.2f}% | "
        f"{yes(s_daily['retry_after_on_every_429'])} |\n\n"
        f"Every answer to the rate-limited key carried `RateLimit` and `RateLimit-Policy`: "
        f"{yes(s_rate['ratelimit_on_every_answer'])}. Answers other than 200/429: {summary['unexpected_statuses']}. "
        f"Concurrency is measured in the router: the replica's in-flight count (`outstanding`, inside the "
        f"admission slot) polled every {args.poll_ms:g} ms. The client-side sweep of the 200s' timestamps is only "
        f"an upper bound — a client reads its answer after the router has freed the slot, late when its loop is "
        f"busy with {args.clients - args.concurrency} other clients' 429s — and showed more than "
        f"{args.concurrency} overlapping for {s_conc['time_over_limit_client']:.0%} of the time.\n")
    write_results("quota_accuracy", vars(args), results, summary, markdown)
    print(f"quota_accuracy: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
