"""``make loadtest``: a bounded, headless Locust run against a function, with reports and an SLO verdict.

Without ``FNSERVE_URL`` it starts its own platform (``fnserve up`` on a free loopback port, state under
the report folder, models from ``.fnserve/artifacts`` when ``make run`` trained them there), deploys
the function (``fnserve deploy``, which runs its training job first if it has no model yet), and
creates an API key for the run. With ``FNSERVE_URL`` it targets that router with ``FNSERVE_API_KEY``.

Locust runs in its own process (it monkey-patches everything with gevent). Reports go to
``loadtests/reports/<timestamp>/``: ``stats_*.csv``, ``report.html``, ``stats.json``, ``slo.json``.
The exit status is Locust's: 0 when the SLO held, 1 when it did not.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from loadtests.shapes import SHAPES

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "loadtests"
FNSERVE = [sys.executable, "-m", "fnserve.cli"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--function", default=os.environ.get("FNSERVE_FUNCTION", "sentiment"))
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all at once)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="steady")
    parser.add_argument("--slo-p95", default="1000", help="ms for every request name, or 'V1 predict=200,…'")
    parser.add_argument("--slo-fail-ratio", default="0")
    parser.add_argument("--reports", type=Path, default=HERE / "reports")
    parser.add_argument("locust_args", nargs="*", help="anything after -- goes to Locust as it is")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _fnserve(url: str, key: str, *args: str) -> str:
    env = {**os.environ, "FNSERVE_URL": url, "FNSERVE_API_KEY": key}
    done = subprocess.run([*FNSERVE, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fnserve {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Platform:
    """A private `fnserve up` for the run, stopped afterwards."""

    def __init__(self, folder: Path) -> None:
        self.state = folder / "state"
        self.url = f"http://127.0.0.1:{_free_port()}"
        env = dict(os.environ)
        trained = ROOT / ".fnserve" / "artifacts"
        if trained.is_dir() and "FNSERVE_ARTIFACT_ROOT" not in env:
            env["FNSERVE_ARTIFACT_ROOT"] = trained.resolve().as_uri()
        self.log = (folder / "router.log").open("wb")
        self.process = subprocess.Popen([*FNSERVE, "up", "--port", self.url.rsplit(":", 1)[1],
                                         "--state-dir", str(self.state)], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not _ready(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fnserve up did not start; see {self.log.name}")
            time.sleep(0.1)
        self.admin = (self.state / "admin.key").read_text().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.log.close()


def print_summary(csv_path: Path) -> None:
    """The final statistics as one table (Locust prints none itself when it writes a JSON report)."""
    if not csv_path.exists():
        return
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = ["name", "requests", "fails", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    table = [[r["Name"] if r["Name"] != "Aggregated" else "total", r["Request Count"], r["Failure Count"],
              f"{float(r['Requests/s']):.1f}", r["50%"], r["95%"], r["99%"], f"{float(r['Max Response Time']):.0f}"]
             for r in rows if r["Name"] != "V2 metadata"]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table, strict=True)]
    print()
    for line in [header, *table]:
        print("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(line, widths,
                                                                                                     strict=True))))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = args.reports / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    platform = None
    url, key = os.environ.get("FNSERVE_URL"), os.environ.get("FNSERVE_API_KEY", "")
    try:
        if not url:
            platform = Platform(folder)
            url = platform.url
            print(f"loadtest: platform on {url}; deploying functions/{args.function}", flush=True)
            _fnserve(url, platform.admin, "deploy", str(ROOT / "functions" / args.function))
            created = json.loads(_fnserve(url, platform.admin, "keys", "create", "--name", "loadtest", "--json"))
            key = created["token"]
        command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
                   "-u", str(args.users), "-r", str(args.spawn_rate or args.users), "-t", f"{args.duration:g}s",
                   "--host", url, "--shape", args.shape, "--only-summary", "--csv", str(folder / "stats"),
                   "--html", str(folder / "report.html"), "--json-file", str(folder / "stats"),
                   "--slo-p95", args.slo_p95, "--slo-fail-ratio", args.slo_fail_ratio,
                   "--slo-report", str(folder / "slo.json"), *args.locust_args]
        print(f"loadtest: {args.shape} load, {args.users} users, {args.duration:g} s against "
              f"{url}/…/{args.function}", flush=True)
        env = {**os.environ, "FNSERVE_API_KEY": key, "FNSERVE_FUNCTION": args.function}
        code = subprocess.run(command, env=env).returncode
    finally:
        if platform is not None:
            platform.stop()
    print_summary(folder / "stats_stats.csv")
    slo = folder / "slo.json"
    if slo.exists():
        verdict = json.loads(slo.read_text())
        print("\nSLO verdict: " + ("PASS" if verdict["passed"] else "FAIL"))
        print("\n".join(f"  {line}" for line in verdict["lines"]))
    print(f"\nreports: {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}/ "
          f"(report.html, stats_stats.csv, stats.json, slo.json)")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
