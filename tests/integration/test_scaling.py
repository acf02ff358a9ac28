"""Scale to zero, activation and autoscaling with real replica processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Router, alive, function_copy, http, manifest_of, running_router, wait_for
from tests.services import descendants

pytestmark = pytest.mark.slow

FAST = {"FNSERVE_AUTOSCALE_TICK": "0.5"}


def function(example_dir: Path, target: Path, **scaling: object) -> Path:
    return function_copy(example_dir, target, scaling=scaling)


def predict(router: Router, text: str = "a lovely, charming film", timeout: float = 60) -> tuple[int, Any, Any]:
    return http("POST", f"{router.url}/v1/models/sentiment:predict", {"instances": [text]}, timeout=timeout)


def status(router: Router) -> dict:
    return json.loads(router.cli("status", "sentiment", "--json", check=True).stdout)


def replicas_started(router: Router) -> int:
    """Each replica ever started has its own log file."""
    return len(list((router.state_dir / "logs" / "sentiment").glob("*.log")))


@contextmanager
def sampling(sample: Callable[[], object], interval: float = 0.05) -> Iterator[list[object]]:
    """Call ``sample`` in a background thread until the block ends; yields the growing list of results."""
    seen: list[object] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            seen.append(sample())
            stop.wait(interval)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def fast_router(tmp_path: Path) -> Iterator[Router]:
    with running_router(tmp_path / "state", env=FAST) as router:
        yield router


def test_scale_from_zero_and_back(fast_router: Router, example_dir: Path, tmp_path: Path) -> None:
    fn = function(example_dir, tmp_path / "fn", minReplicas=0, stableWindow="2s", scaleToZeroGracePeriod="1s")
    fast_router.cli("deploy", str(fn), check=True)
    assert fast_router.replica_pids() == set()  # the deploy proved the revision starts, then let it go

    status_code, headers, body = predict(fast_router)
    assert status_code == 200 and body["predictions"][0]["label"] == "positive"
    cold_ms = int(headers["X-Fnserve-Cold-Start"])
    assert 0 < cold_ms < 60_000
    assert len(fast_router.replica_pids()) == 1

    warm_code, warm_headers, _ = predict(fast_router)
    assert warm_code == 200 and "X-Fnserve-Cold-Start" not in warm_headers

    code, headers, text = http("GET", f"{fast_router.url}/metrics", headers=fast_router.admin)
    metrics = text.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'fnserve_requests_total{code="200",function="sentiment",revision="1"} 2.0' in metrics
    assert 'fnserve_cold_start_seconds_count{function="sentiment",revision="1"} 1.0' in metrics
    assert 'fnserve_replicas{function="sentiment",state="ready"} 1.0' in metrics
    assert 'fnserve_queued_requests{function="sentiment"} 0.0' in metrics

    # the console's view of that cold start: split by where its time went, the replica's model load included
    stats_url = f"{fast_router.url}/api/functions/sentiment/stats"
    # the server's part comes on the replica's pipe just after it starts accepting: at once, but not before
    wait_for(lambda: http("GET", stats_url, headers=fast_router.admin)[2]["coldStarts"][0]["serverMs"] is not None,
             10, "the replica to say it serves")
    code, _, stats = http("GET", stats_url, headers=fast_router.admin)
    (split,) = stats["coldStarts"]
    assert code == 200 and split["waitedMs"] == pytest.approx(cold_ms, abs=1)
    parts = [split[p] for p in ("queueMs", "forkMs", "importsMs", "loadMs", "readyMs")]
    assert all(p is not None and p >= 0 for p in parts) and split["loadMs"] > 0
    assert sum(parts) == pytest.approx(split["waitedMs"], abs=1)  # every ms of the wait is in one phase
    assert split["serverMs"] >= 0 and split["totalMs"] == pytest.approx(split["waitedMs"] + split["serverMs"], abs=0.2)
    listed = http("GET", f"{fast_router.url}/api/functions", headers=fast_router.admin)[2]["functions"]
    assert listed[0]["stats"]["coldStarts"] == 1 and listed[0]["stats"]["rpm"] == 2 and listed[0]["actual"] == 1

    # stable window (2 s) at zero + grace (1 s), decided on 0.5 s ticks
    wait_for(lambda: not fast_router.replica_pids(), 20, "the idle function to scale to zero")
    assert status(fast_router)["ready"] is True  # idle at zero is ready: the next request wakes it
    assert_nothing_holds(fast_router, fn)


def assert_nothing_holds(router: Router, fn: Path) -> None:
    """At zero no process holds the function: what is left below the router is the runtime's fork server
    and the spare child it forks ahead of the next cold start, neither of which has the function's code,
    model, log or port open — they serve every function of the runtime and none."""
    assert router.process is not None
    left = [pid for pid in descendants(router.process.pid) if alive(pid)]
    assert len(left) <= 2, left
    for pid in left:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "fnserve.backends.local.forkserver" in cmdline, cmdline
        assert not os.readlink(f"/proc/{pid}/cwd").startswith(str(fn))
        opened = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [path for path in opened if str(fn) in path or "model" in path or "/logs/sentiment" in path]
        listening = [line for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
                     if line.split()[3] == "0A" and line.split()[9] in {p[8:-1] for p in opened}]
        assert not listening, (pid, opened)  # not a replica's socket, nor the router's own


def test_burst_from_zero_all_succeed_within_bounds(fast_router: Router, example_dir: Path, tmp_path: Path) -> None:
    fn = function(example_dir, tmp_path / "fn", minReplicas=0, maxReplicas=3, scaleTarget=4,
                  stableWindow="6s", scaleToZeroGracePeriod="1s")
    fast_router.cli("deploy", str(fn), check=True)
    proofs = replicas_started(fast_router)  # the deploy's own proving replica
    with sampling(lambda: len(fast_router.replica_pids())) as counts, ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: predict(fast_router, f"what a wonderful film number {i}"), range(50)))
    assert [code for code, _, _ in results] == [200] * 50
    assert all(body["predictions"][0]["label"] == "positive" for _, _, body in results)
    assert any("X-Fnserve-Cold-Start" in headers for _, headers, _ in results)
    assert max(counts) <= 3
    assert replicas_started(fast_router) - proofs <= 3  # no replica started beyond maxReplicas


def test_container_concurrency_queues_instead_of_rejecting(fast_router: Router, warm_dir: Path,
                                                           tmp_path: Path) -> None:
    fn = function(warm_dir, tmp_path / "fn", minReplicas=1, maxReplicas=1, containerConcurrency=1)
    fast_router.cli("deploy", str(fn), check=True)
    in_flight = lambda: max([0, *(r["outstanding"] for r in status(fast_router)["replicas"])])  # noqa: E731
    with sampling(in_flight, interval=0) as samples, ThreadPoolExecutor(8) as pool:
        codes = [code for code, _, _ in pool.map(lambda i: predict(fast_router), range(40))]
    assert codes == [200] * 40
    assert max(samples) <= 1


def test_full_queue_answers_503_with_retry_after(tmp_path: Path, warm_dir: Path) -> None:
    router = Router(tmp_path / "state", env={**FAST, "FNSERVE_ACTIVATOR_QUEUE_LIMIT": "2"}).start()
    fn = function(warm_dir, tmp_path / "fn", minReplicas=1, maxReplicas=1, containerConcurrency=1)
    try:
        router.cli("deploy", str(fn), check=True)
        (pid,) = router.replica_pids()
        os.kill(pid, signal.SIGSTOP)  # the replica takes one request and never answers it
        pool = ThreadPoolExecutor(3)
        stuck = [pool.submit(predict, router, "held", 30) for _ in range(3)]  # 1 in flight + 2 queued
        wait_for(lambda: status(router)["queued"] == 2, 15, "two requests to be queued")
        code, headers, body = predict(router)
        assert code == 503 and headers["Retry-After"] == "1"
        assert "2 requests are already waiting" in body["error"]
        metrics = http("GET", f"{router.url}/metrics", headers=router.admin)[2].decode()
        assert 'fnserve_queue_rejections_total{function="sentiment"} 1.0' in metrics
        os.kill(pid, signal.SIGCONT)
        assert [f.result(timeout=30)[0] for f in stuck] == [200, 200, 200]
        pool.shutdown()
    finally:
        router.stop()


def test_killed_replica_under_load_is_replaced_and_nothing_hangs(fast_router: Router, warm_dir: Path,
                                                                 tmp_path: Path) -> None:
    fn = function(warm_dir, tmp_path / "fn", minReplicas=1, maxReplicas=2)
    fast_router.cli("deploy", str(fn), check=True)
    (victim,) = fast_router.replica_pids()
    outcomes: list[tuple[int, float]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            code = predict(fast_router, timeout=45)[0]
            outcomes.append((code, time.monotonic() - started))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(outcomes) > 20, 30, "load before the kill")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: fast_router.replica_pids() - {victim}, 30, "a replacement replica")
        count = len(outcomes)
        wait_for(lambda: len(outcomes) > count + 20, 30, "load after the replacement")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert {code for code, _ in outcomes} <= {200, 503}
    assert max(seconds for _, seconds in outcomes) < 30  # the function's timeout; nothing hung
    assert [code for code, _ in outcomes[-10:]] == [200] * 10


def test_hung_replica_is_killed_its_requests_get_503_and_it_is_replaced(tmp_path: Path, warm_dir: Path) -> None:
    env = {**FAST, "FNSERVE_LIVENESS_TIMEOUT": "0.5", "FNSERVE_LIVENESS_FAILURES": "2"}
    with running_router(tmp_path / "state", env=env) as router:
        router.cli("deploy", str(function(warm_dir, tmp_path / "fn", minReplicas=1, maxReplicas=1)), check=True)
        (pid,) = router.replica_pids()
        os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
        started = time.monotonic()
        code, headers, body = predict(router, timeout=60)
        assert code == 503 and headers["Retry-After"] == "1", body
        assert time.monotonic() - started < 15  # far below the function's 30 s timeout
        assert not alive(pid)
        wait_for(lambda: predict(router)[0] == 200, 30, "the replacement replica to serve")
        assert "stopped answering (2 health checks failed); replacing it" in router.log()
        metrics = http("GET", f"{router.url}/metrics", headers=router.admin)[2].decode()
        assert 'fnserve_replica_restarts_total{function="sentiment",reason="unresponsive"} 1.0' in metrics
        assert 'fnserve_replica_restarts_total{function="sentiment",reason="exited"} 0.0' in metrics


def gpu_function(example_dir: Path, target: Path, name: str, gpus: int, **scaling: object) -> Path:
    resources = {**manifest_of(example_dir)["spec"]["resources"], "gpu": gpus}
    return function_copy(example_dir, target, name=name, scaling=scaling, resources=resources)


def test_gpus_are_handed_out_whole_and_freed_at_zero(tmp_path: Path, example_dir: Path) -> None:
    with running_router(tmp_path / "state", env={**FAST, "FNSERVE_GPUS": "0,1"}) as router:
        fn = gpu_function(example_dir, tmp_path / "fn", "sentiment", 1, minReplicas=0, maxReplicas=3, scaleTarget=1,
                          stableWindow="2s", scaleToZeroGracePeriod="0s")
        router.cli("deploy", str(fn), check=True)
        held = lambda: {tuple(r["gpus"]) for r in status(router)["replicas"]}  # noqa: E731
        with sampling(held, interval=0) as samples, ThreadPoolExecutor(6) as pool:
            codes = [code for code, _, _ in pool.map(lambda i: predict(router), range(60))]
        seen = set().union(*samples)
        assert codes == [200] * 60  # requests wait for a GPU like any cold start
        assert seen <= {("0",), ("1",)} and seen  # whole GPUs, never more replicas than GPUs
        assert len(router.replica_pids()) <= 2
        assert "CUDAExecutionProvider" in router.cli("logs", "sentiment", check=True).stdout  # CUDA was asked for

        wait_for(lambda: not router.replica_pids(), 20, "scale to zero")
        both = gpu_function(example_dir, tmp_path / "both", "both-gpus", 2, minReplicas=1)
        router.cli("deploy", str(both), check=True)  # needs both GPUs: scale to zero gave them back
        assert [r["gpus"] for r in status_of(router, "both-gpus")["replicas"]] == [["0", "1"]]

        too_many = gpu_function(example_dir, tmp_path / "many", "many-gpus", 3)
        result = router.cli("deploy", str(too_many))
        assert result.returncode == 1
        assert "spec.resources.gpu asks for 3 GPU(s); this machine hands out 2 (0, 1)" in result.stderr


def status_of(router: Router, name: str) -> dict:
    return json.loads(router.cli("status", name, "--json", check=True).stdout)


def test_waiting_past_the_activator_deadline_answers_504(tmp_path: Path, warm_dir: Path) -> None:
    with running_router(tmp_path / "state", env={**FAST, "FNSERVE_ACTIVATOR_TIMEOUT": "1"}) as router:
        fn = function(warm_dir, tmp_path / "fn", minReplicas=1, maxReplicas=1, containerConcurrency=1)
        router.cli("deploy", str(fn), check=True)
        (pid,) = router.replica_pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(predict, router, "held", 60)  # takes the only slot and hangs
                wait_for(lambda: status(router)["replicas"][0]["outstanding"] == 1, 10, "the slot to be taken")
                started = time.monotonic()
                code, _, body = predict(router)
                waited = time.monotonic() - started
                assert code == 504, body
                assert body["error"] == "function 'sentiment': no replica could take the request within 1 s"
                assert 0.9 < waited < 5
                os.kill(pid, signal.SIGCONT)
                assert held.result(timeout=30)[0] == 200
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
