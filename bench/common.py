"""Helpers shared by the benchmarks: a platform to measure, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fnserve.cli.client import AdminClient, AdminError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EXAMPLE = ROOT / "functions" / "sentiment"


# One V1 prediction, as every benchmark sends it.
BODY = json.dumps({"instances": ["what a wonderful film"]}).encode()
HEADERS = {"Content-Type": "application/json"}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_ADMIN: dict[str, AdminClient] = {}
ROUTER_PIDS: dict[str, int] = {}


def admin(url: str) -> AdminClient:
    """The admin API of the router at ``url`` (one running_platform() started), as its admin key."""
    return _ADMIN[url]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare_function(work: Path, name: str, public: bool = True, **scaling: Any) -> Path:
    """A copy of the example named ``name`` with the given spec.scaling; its model is the example's
    training job's run, trained once per work folder through the job wrapper."""
    import yaml

    function = work / name
    shutil.copytree(EXAMPLE, function, ignore=shutil.ignore_patterns("__pycache__", ".train-*", "model"))
    manifest = yaml.safe_load((function / "function.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["auth"] = {"public": public}
    manifest["spec"]["model"]["uri"] = trained_run(work)
    if scaling:
        manifest["spec"]["scaling"] = scaling
    (function / "function.yaml").write_text(yaml.safe_dump(manifest))
    return function


def trained_run(work: Path, example: Path = EXAMPLE) -> str:
    """The URI of a published run of an example function (the first call in ``work`` runs its job)."""
    root = work / "artifacts" / example.name
    runs = sorted(p for p in root.glob("*/_manifest.json")) if root.exists() else []
    if not runs:
        subprocess.run([sys.executable, "-m", "fnserve.jobs.run", "--manifest", str(example / "train.yaml"),
                        "--output", root.as_uri()], check=True, capture_output=True)
        runs = sorted(root.glob("*/_manifest.json"))
    return runs[-1].parent.as_uri()


@contextmanager
def running_platform(work: Path, label: str, functions: list[Path], env: dict[str, str] | None = None,
                     code: Path | None = None) -> Iterator[str]:
    """`fnserve up` with ``functions`` deployed and ready; yields the router URL. ``code``: another checkout
    of fnserve to run instead of this one (``python -m`` puts the working folder first on sys.path, so the
    router is started there, and PYTHONPATH names it for the processes it starts)."""
    if code is not None:
        env = {**(env or {}), "PYTHONPATH": str(code)}
    port = free_port()
    log_path = work / f"router-{label}.log"
    router = subprocess.Popen([sys.executable, "-m", "fnserve.cli", "up", "--port", str(port),
                               "--state-dir", str(work / f"state-{label}"),
                               *[arg for f in functions for arg in ("--deploy", str(f))]],
                              stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                              cwd=code)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                _ADMIN[url] = AdminClient(url, (work / f"state-{label}" / "admin.key").read_text().strip(), timeout=10)
                ROUTER_PIDS[url] = router.pid
                deployed = _ADMIN[url].functions()["functions"]
                if len(deployed) == len(functions) and all(f["ready"] for f in deployed):
                    break
            except (OSError, AdminError):
                pass
            if time.monotonic() > deadline or router.poll() is not None:
                raise SystemExit(f"platform did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(30)


@contextmanager
def workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="fnserve-bench-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def checkout_name(checkout: str | Path) -> str:
    """How a report names another checkout it measured: its commit, else its folder."""
    found = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True)
    return f"commit {found.stdout.strip()}" if found.returncode == 0 else Path(checkout).resolve().name


def machine_line() -> str:
    """How each report names the machine it ran on."""
    m = machine()
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_results(name: str, parameters: dict[str, Any], results: dict[str, Any], summary: dict[str, Any],
                  markdown: str) -> None:
    """bench/results/<name>.json (everything measured, with the machine and time) and <name>.md."""
    data = {"benchmark": name, "machine": machine(), "parameters": parameters, "results": results,
            "summary": summary, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


# -- helpers for the open-loop benchmarks (load_curve, quota_accuracy) ---------------------------
def run_async(coroutine: Any) -> Any:
    """asyncio.run on uvloop when it is installed (the router's loop too): a load generator in Python
    should spend as little of the shared CPU as it can."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def arrival_times(rate: float, seconds: float, arrivals: str = "uniform", seed: int = 0) -> list[float]:
    """Offsets (s) at which an open-loop client starts requests: ``rate`` per second for ``seconds``,
    evenly spaced ("uniform") or as a Poisson process ("poisson", seeded)."""
    import random

    if arrivals == "uniform":
        return [i / rate for i in range(int(rate * seconds))]
    rng, t, times = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return times
        times.append(t)


async def open_loop(session: Any, url: str, schedule: list[float], headers: dict[str, str] | None = None,
                    body: bytes = BODY, keep_headers: tuple[str, ...] = (), drain: float = 3.0,
                    timeout: float = 30.0, keep_error_body: bool = False) -> dict[str, Any]:
    """Starts one request at each offset of ``schedule`` (seconds from now) without waiting for
    answers, then waits up to ``drain`` s after the last start for the stragglers (cancelled after).

    Latency is counted from the *scheduled* start, so a client that falls behind its schedule, or
    requests queued for a connection, count against the server instead of vanishing (no coordinated
    omission). Returns {"start": perf_counter at offset 0, "records": [...]}, one record per request:
    {"at": scheduled offset, "lag": how late it was really started (s), "done": offset of the answer
    or None, "latency_ms", "status" (None when it failed or was cancelled), "headers": the
    ``keep_headers`` present on the answer, and "body" (text) for answers other than 200 when
    ``keep_error_body``}.
    """
    import asyncio

    import aiohttp

    records: list[dict[str, Any]] = []
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def one(record: dict[str, Any]) -> None:
        record["lag"] = time.perf_counter() - start - record["at"]
        try:
            async with session.post(url, data=body, headers=headers or HEADERS, timeout=client_timeout) as response:
                content = await response.read()
                record["status"] = response.status
                if keep_error_body and response.status != 200:
                    record["body"] = content.decode(errors="replace")
                record["headers"] = {h: response.headers[h] for h in keep_headers if h in response.headers}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            record["error"] = type(exc).__name__
        finally:
            record["done"] = time.perf_counter() - start
            record["latency_ms"] = (record["done"] - record["at"]) * 1000

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    i, n = 0, len(schedule)
    while i < n:
        now = time.perf_counter() - start
        if schedule[i] > now:
            await asyncio.sleep(schedule[i] - now)
            now = time.perf_counter() - start
        while i < n and schedule[i] <= now:  # catch up: everything due by now goes out at once
            record = {"at": schedule[i], "lag": None, "done": None, "latency_ms": None, "status": None, "headers": {}}
            records.append(record)
            tasks.append(asyncio.create_task(one(record)))
            i += 1
    end = (schedule[-1] if schedule else 0.0) + drain
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, end - (time.perf_counter() - start)))
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for record in records:
        if record.get("error") is None and record["status"] is None:
            record["error"] = "cancelled"
        if record["done"] is None:  # cancelled before it even started
            record["latency_ms"] = (end - record["at"]) * 1000
    return {"start": start, "records": records}
