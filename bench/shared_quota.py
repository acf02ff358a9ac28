"""How exactly a daily quota holds when three routers share it through Redis, whether the usage ledger
adds up across them, and how fast a key revoked on one router is refused by the others.

Setup: one PostgreSQL (the shared state database) and one redis-server (rate limits, daily quotas and
the usage ledger), both real servers on 127.0.0.1 from tests/services.py; a pepper file and an admin
token file every router reads (FNSERVE_PEPPER_FILE, FNSERVE_ADMIN_KEY_FILE). Router A starts with
`--deploy` of a private copy of the sentiment example (one replica); routers B and C start without it
and learn of the function from the database. Each router runs its own replica.

Each round:
- quota: a fresh key with daily limit D, created through router B's admin API; N requests from C
  closed-loop aiohttp clients (uvloop), client i sending to router i mod 3, so the three routers take
  the load side by side. Redis checks and counts each request atomically, so the three together should
  admit D — [D, D + 5] is the bound the integration test holds them to. The 200s are counted per
  router and overall; then GET /api/usage?key=<id> is read from router C (polled until it stops
  changing: every router merges its Redis tallies into the database each second) and must show
  requests = N and requests − clientErrors = the 200s the clients saw.
- revocation: a key created through router A is used once on B and on C (so both hold it verified),
  then revoked through A (DELETE /api/keys/<id>); B and C are each polled (a request, then 10 ms) until
  they answer 401. The seconds are counted from the DELETE's answer (the revocation is committed), so
  they hold the other routers' polling of the database (every 0.25 s) plus one poll here.

Figures: the admitted count's median, min and max over rounds (one round over the bound matters);
the revocation times' median and max over rounds × {B, C}; the load phase's throughput (median of
rounds). Client, three routers, three replicas, PostgreSQL and Redis all share this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    BODY,
    HEADERS,
    free_port,
    machine,
    machine_line,
    prepare_function,
    run_async,
    workdir,
    write_results,
)
from fnserve.cli.client import AdminClient, AdminError
from tests.services import descendants

PREDICT = "/v1/models/sentiment:predict"
LABELS = ("A", "B", "C")
START_TIMEOUT = 180.0


@dataclass
class RouterProcess:
    """One `fnserve up` of this benchmark: its label, URL, process and log."""

    label: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    admin: AdminClient
    below: dict[int, int] = field(default_factory=dict)  # pid → start time of the processes it started

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def shared_env(work: Path, database_url: str, redis_url: str) -> tuple[dict[str, str], str]:
    """The variables every router shares, and the admin token they all accept."""
    pepper, admin_file = work / "pepper", work / "admin-token"
    pepper.write_bytes(secrets.token_bytes(32))
    pepper.chmod(0o600)
    token = f"fns_{secrets.token_hex(6)}_{secrets.token_hex(20)}"
    admin_file.write_text(token + "\n")
    admin_file.chmod(0o600)
    return {"FNSERVE_DATABASE_URL": database_url, "FNSERVE_REDIS_URL": redis_url,
            "FNSERVE_PEPPER_FILE": str(pepper), "FNSERVE_ADMIN_KEY_FILE": str(admin_file)}, token


# -- processes ----------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants_started(pid: int) -> dict[int, int]:
    """The live processes below ``pid``, each with its start time (so a reused pid is never taken for one)."""
    return {child: started for child in descendants(pid) if (started := _start_time(child)) is not None}


def start_router(work: Path, label: str, env: dict[str, str], token: str, deploy: Path | None) -> RouterProcess:
    port = free_port()
    log = work / f"router-{label}.log"
    argv = [sys.executable, "-m", "fnserve.cli", "up", "--port", str(port), "--state-dir", str(work / f"state-{label}")]
    if deploy is not None:
        argv += ["--deploy", str(deploy)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    return RouterProcess(label, url, process, log, AdminClient(url, token, timeout=10))


def wait_ready(routers: list[RouterProcess], function: str = "sentiment") -> dict[str, float]:
    """Blocks until every router lists ``function`` ready (GET /api/functions as the shared admin key);
    the seconds each took from now."""
    began, ready = time.monotonic(), {}
    pending = list(routers)
    last: dict[str, str] = {}  # each router's last answer, for the message when it never gets ready
    while pending:
        for router in list(pending):
            try:
                listed = {f["name"]: f for f in router.admin.functions()["functions"]}
                if listed.get(function, {}).get("ready"):
                    ready[router.label] = round(time.monotonic() - began, 2)
                    pending.remove(router)
                    router.below = descendants_started(router.process.pid)
                    continue
                last[router.label] = f"listed {sorted(listed)}" if listed else "no functions listed"
            except AdminError as exc:
                last[router.label] = f"GET /api/functions answered {exc.status}: {exc.message}"
                if exc.status in (401, 403) and time.monotonic() - began > 15:
                    raise SystemExit(f"router {router.label} refuses the shared admin key of FNSERVE_ADMIN_KEY_FILE "
                                     f"({last[router.label]}):\n{router.log_tail()}") from None
            except OSError as exc:
                last[router.label] = f"no answer ({exc})"
            if router.process.poll() is not None:
                raise SystemExit(f"router {router.label} exited ({router.process.returncode}):\n{router.log_tail()}")
        if pending and time.monotonic() - began > START_TIMEOUT:
            raise SystemExit("; ".join(f"router {r.label} did not list {function} ready in {START_TIMEOUT:g} s "
                                       f"({last.get(r.label, 'no answer')}):\n{r.log_tail()}" for r in pending))
        time.sleep(0.1)
    return ready


def stop_router(router: RouterProcess) -> None:
    """SIGTERM, wait; then kill whatever it started that is still there (its replicas and fork server)."""
    if router.process.poll() is None:
        router.below.update(descendants_started(router.process.pid))
        router.process.send_signal(signal.SIGTERM)
        try:
            router.process.wait(30)
        except subprocess.TimeoutExpired:
            print(f"router {router.label} did not stop in 30 s: killed", file=sys.stderr)
            router.process.kill()
            router.process.wait(10)
    for pid, started in router.below.items():
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
                print(f"router {router.label} left process {pid} behind: killed", file=sys.stderr)
            except ProcessLookupError:
                pass


@contextmanager
def three_routers(work: Path, function: Path, env: dict[str, str], token: str,
                  keep_logs: Path | None) -> Iterator[tuple[list[RouterProcess], dict[str, float]]]:
    """Router A deploys ``function``; B and C start once A serves it (the schema is in place) and find it
    in the database. All three and their replicas are stopped afterwards, whatever happened."""
    routers: list[RouterProcess] = []
    failed = True
    try:
        began = time.monotonic()
        routers.append(start_router(work, "A", env, token, function))
        ready = {"A": wait_ready(routers[:1])["A"]}
        routers += [start_router(work, label, env, token, None) for label in ("B", "C")]
        ready.update({label: round(ready["A"] + s, 2) for label, s in wait_ready(routers[1:]).items()})
        print(f"routers ready after {ready} s ({time.monotonic() - began:.0f} s)", flush=True)
        yield routers, ready
        failed = False
    finally:
        for router in routers:
            try:
                stop_router(router)
            except Exception as exc:  # stop the others regardless
                print(f"stopping router {router.label}: {exc!r}", file=sys.stderr)
        if failed:
            for router in routers:
                print(f"--- router {router.label} log (tail) ---\n{router.log_tail()}", file=sys.stderr)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for router in routers:
                if router.log.exists():
                    shutil.copy(router.log, keep_logs / router.log.name)


# -- measurements -------------------------------------------------------------------------------
async def post(session: aiohttp.ClientSession, url: str, token: str, timeout: float = 30.0) -> int | str:
    """One prediction as ``token``: the status, or the exception's name when there was no answer."""
    try:
        async with session.post(url + PREDICT, data=BODY, headers={**HEADERS, "Authorization": f"Bearer {token}"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return type(exc).__name__


async def load(session: aiohttp.ClientSession, urls: list[str], token: str, total: int,
               concurrency: int) -> tuple[dict[str, Counter[int | str]], float]:
    """``total`` requests from ``concurrency`` closed-loop clients, client i sending to urls[i mod 3]; the
    answers per router and the seconds it took."""
    remaining = total
    answers: dict[str, Counter[int | str]] = {url: Counter() for url in urls}

    async def client(i: int) -> None:
        nonlocal remaining
        url = urls[i % len(urls)]
        while remaining > 0:
            remaining -= 1  # one event loop: no lock needed between the check and the take
            answers[url][await post(session, url, token)] += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return answers, time.perf_counter() - began


async def settled_usage(admin: AdminClient, key_id: str, expected: int, timeout: float = 10.0) -> tuple[dict[str, int], float]:
    """The key's usage summed over its rows, read until it shows ``expected`` requests or stops
    changing for 2.5 s (each router merges its tallies every second); the seconds that took."""
    began = time.perf_counter()
    last: dict[str, int] | None = None
    unchanged_since = began
    while True:
        rows = (await asyncio.to_thread(admin.usage, key=key_id))["usage"]
        usage = {f: sum(int(r.get(f, 0)) for r in rows) for f in ("requests", "clientErrors", "serverErrors")}
        now = time.perf_counter()
        if usage != last:
            last, unchanged_since = usage, now
        if usage["requests"] >= expected or now - unchanged_since > 2.5 or now - began > timeout:
            return usage, round(now - began, 3)
        await asyncio.sleep(0.1)


async def quota_round(session: aiohttp.ClientSession, routers: list[RouterProcess], r: int,
                      args: argparse.Namespace) -> dict[str, Any]:
    a, b, c = routers
    created = await asyncio.to_thread(b.admin.create_key, f"bench-shared-daily-{r}", limits={"daily": args.daily})
    key_id, token = created["key"]["id"], created["token"]
    answers, elapsed = await load(session, [x.url for x in routers], token, args.requests, args.concurrency)
    total: Counter[int | str] = sum(answers.values(), Counter())
    ok, refused = total[200], total[429]
    usage, usage_wait = await settled_usage(c.admin, key_id, args.requests)
    return {
        "key": key_id, "sent": sum(total.values()), "ok": ok, "refused": refused,
        "other": {str(k): n for k, n in total.items() if k not in (200, 429)},
        "ok_per_router": {x.label: answers[x.url][200] for x in routers},
        "refused_per_router": {x.label: answers[x.url][429] for x in routers},
        "within_bound": args.daily <= ok <= args.daily + args.bound,
        "overshoot": ok - args.daily,
        "seconds": round(elapsed, 3), "rps": round(args.requests / elapsed, 1),
        "usage": usage, "usage_read_after_s": usage_wait,
        "usage_exact": usage["requests"] == args.requests and usage["requests"] - usage["clientErrors"] == ok,
    }


async def revocation_round(session: aiohttp.ClientSession, routers: list[RouterProcess], r: int,
                           args: argparse.Namespace) -> dict[str, Any]:
    a, b, c = routers
    created = await asyncio.to_thread(a.admin.create_key, f"bench-shared-revoke-{r}")
    key_id, token = created["key"]["id"], created["token"]
    before = {x.label: await post(session, x.url, token) for x in (b, c)}  # verified (cached) there now
    sent = time.perf_counter()
    await asyncio.to_thread(a.admin.revoke_key, key_id)
    revoked = time.perf_counter()

    async def until_refused(router: RouterProcess) -> tuple[float | None, int]:
        polls = 0
        while time.perf_counter() - revoked < args.revoke_timeout:
            polls += 1
            if await post(session, router.url, token) == 401:
                return round(time.perf_counter() - revoked, 4), polls
            await asyncio.sleep(0.01)
        return None, polls

    (b_s, b_polls), (c_s, c_polls) = await asyncio.gather(until_refused(b), until_refused(c))
    return {"key": key_id, "before": before, "delete_s": round(revoked - sent, 4),
            "seconds": {"B": b_s, "C": c_s}, "polls": {"B": b_polls, "C": c_polls},
            "a_refuses": await post(session, a.url, token) == 401}


async def measure(routers: list[RouterProcess], token: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"warmup": {}, "quota": [], "revocation": []}
    connector = aiohttp.TCPConnector(limit=max(100, args.concurrency * 2))
    async with aiohttp.ClientSession(connector=connector) as session:
        for router in routers:  # each router's own replica, and its connections, warmed with the admin key
            codes = Counter(await asyncio.gather(*(post(session, router.url, token) for _ in range(args.warmup))))
            out["warmup"][router.label] = {str(k): n for k, n in codes.items()}
            if codes[200] == 0:  # nothing to measure: say why rather than report a quota of nothing
                raise SystemExit(f"router {router.label} served none of {args.warmup} warm-up predictions as the "
                                 f"admin key (answers: {dict(codes)}):\n{router.log_tail(40)}")
        for r in range(args.rounds):
            out["quota"].append(await quota_round(session, routers, r, args))
            print(f"round {r} quota: {out['quota'][-1]}", flush=True)
            out["revocation"].append(await revocation_round(session, routers, r, args))
            print(f"round {r} revocation: {out['revocation'][-1]}", flush=True)
    return out


def summarize(results: dict[str, Any], args: argparse.Namespace, ready: dict[str, float]) -> dict[str, Any]:
    quota, revocation = results["quota"], results["revocation"]
    admitted = [q["ok"] for q in quota]
    seconds = [s for rev in revocation for s in rev["seconds"].values()]
    measured = [s for s in seconds if s is not None]
    median_ok = statistics.median(admitted)
    return {
        "daily": args.daily, "sent": args.requests, "concurrency": args.concurrency, "routers": len(LABELS),
        "bound": args.bound, "rounds": args.rounds,
        "admitted_median": median_ok, "admitted_min": min(admitted), "admitted_max": max(admitted),
        "overshoot_pct": round((median_ok - args.daily) / args.daily * 100, 2),
        "overshoot_max_pct": round((max(admitted) - args.daily) / args.daily * 100, 2),
        "within_bound_every_round": all(q["within_bound"] for q in quota),
        "usage_exact_every_round": all(q["usage_exact"] for q in quota),
        "admitted_per_router_median": {label: statistics.median(q["ok_per_router"][label] for q in quota)
                                       for label in LABELS},
        "unexpected_answers": sum(sum(q["other"].values()) for q in quota),
        "throughput_rps": statistics.median(q["rps"] for q in quota),
        "revocation_median_s": round(statistics.median(measured), 4) if measured else None,
        "revocation_max_s": max(measured) if measured else None,
        "revocation_all_refused": len(measured) == len(seconds),
        "revocation_worked_before": all(v == 200 for rev in revocation for v in rev["before"].values()),
        "ready_s": ready,
    }


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    s = summary

    def yes(flag: bool) -> str:
        return "yes" if flag else "**no**"

    per_router = " / ".join(f"{s['admitted_per_router_median'][label]:.0f}" for label in LABELS)
    revocation = (f"{s['revocation_median_s'] * 1000:.0f} ms / {s['revocation_max_s'] * 1000:.0f} ms"
                  if s["revocation_median_s"] is not None else "never")
    if not s["revocation_all_refused"]:
        revocation += f" (**some router still accepted the key after {args.revoke_timeout:g} s**)"
    return (
        "## Shared daily quota across three routers (Redis + PostgreSQL)\n\n"
        f"{machine_line()}, {time.strftime('%Y-%m-%d', time.gmtime())}; everything ran on this one "
        f"{machine()['cores']}-core machine: the aiohttp client (uvloop), three routers (each with its own replica "
        f"of the sentiment example), one PostgreSQL and one redis-server that the routers share. One fresh key per "
        f"round, created through router B's `POST /api/keys`; {args.rounds} rounds.\n\n"
        "| check | load | expected | measured | holds |\n|---|---|---|---|---|\n"
        f"| daily quota {args.daily} over 3 routers | {args.requests} requests, {args.concurrency} closed-loop clients "
        f"round robin over A, B, C | {args.daily} to {args.daily + args.bound} OK | median {s['admitted_median']:.0f} "
        f"OK ({s['overshoot_pct']:+.2f}%), min–max {s['admitted_min']}–{s['admitted_max']}; per router A / B / C (medians) "
        f"{per_router} | {yes(s['within_bound_every_round'])} |\n"
        f"| usage ledger, read on router C | the same | requests = {args.requests}, requests − clientErrors = the "
        f"200s seen | {'exact' if s['usage_exact_every_round'] else 'off'} in every round | "
        f"{yes(s['usage_exact_every_round'])} |\n"
        f"| key revoked through A, refused (401) on B and C | one request, then 10 ms, until 401 | within the "
        f"routers' 0.25 s database polling | median / max {revocation} after the DELETE answered | "
        f"{yes(s['revocation_all_refused'])} |\n\n"
        f"Load-phase throughput (median of rounds, all three routers together): {s['throughput_rps']:.0f} req/s; "
        f"answers other than 200/429: {s['unexpected_answers']}. Before each revocation the key was served on B "
        f"and C: {yes(s['revocation_worked_before'])}. Routers listed the function ready after "
        f"{', '.join(f'{k} {v:.1f} s' for k, v in sorted(s['ready_s'].items()))} (B and C started once A served it).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daily", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1500, help="requests per round (more than --daily)")
    parser.add_argument("--concurrency", type=int, default=24, help="closed-loop clients, round robin over A, B, C")
    parser.add_argument("--bound", type=int, default=5, help="admitted may exceed --daily by at most this many")
    parser.add_argument("--warmup", type=int, default=24, help="requests per router before the rounds (admin key)")
    parser.add_argument("--revoke-timeout", type=float, default=10.0)
    parser.add_argument("--keep-logs", type=Path, help="copy the routers' logs to this folder at the end")
    args = parser.parse_args()

    from tests.services import PostgresServer, RedisServer  # real servers from Debian packages

    began = time.monotonic()
    with workdir() as work, ExitStack() as stack:
        database = PostgresServer()
        stack.callback(database.remove)
        database.init().start()
        (work / "redis").mkdir()
        redis = RedisServer(work / "redis")
        stack.callback(redis.stop)
        redis.start()
        env, token = shared_env(work, database.new_database(), redis.url)
        function = prepare_function(work, "sentiment", public=False, minReplicas=1, maxReplicas=1)
        routers, ready = stack.enter_context(three_routers(work, function, env, token, args.keep_logs))
        results = run_async(measure(routers, token, args))
        stack.close()  # routers, replicas and servers stopped before the report

    summary = summarize(results, args, ready)
    write_results("shared_quota", {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  results, summary, report(summary, args))
    print(f"shared_quota: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
