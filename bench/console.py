"""The web console in a real headless Chromium: how fast the functions page shows 1,000 functions, and
what an open tab's polling costs the router.

1. Render: a router with 1,000 functions (bench/console_fleet.py: the real app over a stand-in backend
   whose functions report replicas and an hour of traffic), signed in; the time from the navigation's
   start to the frame after the 1,000th row is in the table — the page's scripts, the list request and
   building the table included. Each round a fresh browser context (nothing cached). Goal: < 1 s.
2. Polling: the router process's CPU time (utime + stime, /proc) over a window with one tab open, minus
   the same window with none, as a share of one core — for the functions page of the 1,000-function
   fleet, and for the functions page and one function's page (summary, stats, live log tail) of a real
   `fnserve up` serving the example. Goal: ≤ 1% per open tab.

Medians of several rounds; windows alternate idle / tab so that drifts in the machine's load hit both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    ROUTER_PIDS,
    cpu_seconds,
    free_port,
    machine_line,
    prepare_function,
    running_platform,
    workdir,
    write_results,
)

ROWS = '[data-testid="function-row"]'
FRAME_WITH_ALL_ROWS = """([rows, count]) => new Promise(done => {
    const check = () => document.querySelectorAll(rows).length >= count
        ? requestAnimationFrame(() => done(performance.now())) : requestAnimationFrame(check);
    check();
})"""
"""Checked on every frame in the page itself (Playwright's own waiting polls at up to 500 ms apart, and
its predicates are strings the page's CSP rightly refuses to evaluate): when the frame after the one in
which the last row appeared begins, in ms since the navigation started."""


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise SystemExit("bench/console: needs Debian's chromium (apt-get install chromium)")
    return found


@contextmanager
def fleet(work: Path, functions: int) -> Iterator[tuple[str, str, int]]:
    """(url, admin key, pid) of a bench/console_fleet router with ``functions`` functions."""
    port, state = free_port(), work / f"fleet-{functions}"
    log = (work / f"fleet-{functions}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "bench.console_fleet", "--functions", str(functions),
                                "--port", str(port), "--state-dir", str(state)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not (state / "admin.key").exists() or not _answers(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the fleet router did not start: {(work / f'fleet-{functions}.log').read_text()}")
            time.sleep(0.1)
        yield url, (state / "admin.key").read_text().strip(), process.pid
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def signed_in_page(browser: Any, url: str, key: str) -> Any:
    """A fresh context whose session already holds the key (as the sign-in form would leave it)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"sessionStorage.setItem('fnserve.apiKey', {key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    return page


def render_times(browser: Any, url: str, key: str, functions: int, rounds: int) -> list[float]:
    """Milliseconds from navigation start to the frame after the last row appeared, one per round."""
    times = []
    for _ in range(rounds):
        page = signed_in_page(browser, url, key)
        page.goto(f"{url}/console#/functions", wait_until="commit")
        times.append(page.evaluate(FRAME_WITH_ALL_ROWS, [ROWS, functions]))
        assert page.locator(ROWS).count() == functions
        assert not page.errors, page.errors
        page.context.close()
    return times


def polling_cost(browser: Any, url: str, key: str, pid: int, fragment: str, ready: str, window: float,
                 rounds: int) -> dict[str, Any]:
    """The router's CPU share (% of one core) with a tab on ``fragment`` open, less without it."""
    def share(during: Callable[[], None]) -> float:
        before, started = cpu_seconds(pid), time.monotonic()
        during()
        return (cpu_seconds(pid) - before) / (time.monotonic() - started) * 100

    idle, open_ = [], []
    for _ in range(rounds):
        idle.append(share(lambda: time.sleep(window)))
        page = signed_in_page(browser, url, key)
        page.goto(f"{url}/console#{fragment}")
        page.wait_for_selector(ready, timeout=30_000)
        open_.append(share(lambda page=page: page.wait_for_timeout(window * 1000)))
        assert not page.errors, page.errors
        page.context.close()
    added = [o - i for o, i in zip(open_, idle, strict=True)]
    return {"idle_cpu_percent": idle, "tab_cpu_percent": open_, "added_cpu_percent": added,
            "added_cpu_percent_median": statistics.median(added)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per CPU window")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {}
    with workdir() as work, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        version = browser.version
        with fleet(work, args.functions) as (url, key, pid):
            results["render_ms"] = render_times(browser, url, key, args.functions, args.rounds)
            results["fleet_list"] = polling_cost(browser, url, key, pid, "/functions", ROWS, args.window,
                                                 args.cpu_rounds)
        example = prepare_function(work, "sentiment", public=False, minReplicas=1)
        with running_platform(work, "console", [example]) as url:
            key = (work / "state-console" / "admin.key").read_text().strip()
            pid = ROUTER_PIDS[url]
            results["example_list"] = polling_cost(browser, url, key, pid, "/functions", ROWS, args.window,
                                                   args.cpu_rounds)
            results["example_function"] = polling_cost(browser, url, key, pid, "/functions/sentiment",
                                                       '[data-testid="charts"] svg', args.window, args.cpu_rounds)
        browser.close()
    render = statistics.median(results["render_ms"])
    summary = {"functions": args.functions, "chromium": version, "render_ms_median": render,
               "fleet_list_cpu_percent": results["fleet_list"]["added_cpu_percent_median"],
               "example_list_cpu_percent": results["example_list"]["added_cpu_percent_median"],
               "example_function_cpu_percent": results["example_function"]["added_cpu_percent_median"]}
    rows = [(f"functions page, {args.functions} functions", results["fleet_list"]),
            ("functions page, the example", results["example_list"]),
            ("one function's page (summary, chart, cold starts, live log), the example", results["example_function"])]
    table = "\n".join(f"| {what} | {statistics.median(r['idle_cpu_percent']):.2f}% | "
                      f"{statistics.median(r['tab_cpu_percent']):.2f}% | **{r['added_cpu_percent_median']:.2f}%** |"
                      for what, r in rows)
    markdown = f"""## Web console

Machine: {machine_line()}; headless Chromium {version} (Debian's), driven by Playwright.

**The functions page with {args.functions:,} functions renders in {render:.0f} ms** (median of {args.rounds}
fresh page loads, from the navigation's start to the frame after the last row: page, scripts, the list
request and the table; each round {', '.join(f'{t:.0f}' for t in results['render_ms'])} ms). Goal: < 1,000 ms.

What one open tab's polling (every 2 s) costs the router, as a share of one core: the router process's CPU
over {args.window:.0f} s windows with the tab open, less the same window without it (median of {args.cpu_rounds}).
Goal: ≤ 1%.

| tab | router CPU, no tab | router CPU, tab open | added by the tab |
|---|---:|---:|---:|
{table}
"""
    write_results("console", vars(args), results, summary, markdown)


if __name__ == "__main__":
    main()
