"""Faults under load: a replica killed, the router killed and restarted, Redis killed — with clients busy.

Each test runs several client threads that send requests back to back, records when every request
started and ended and how it was answered, injects the fault, and then holds the platform to what a
client may expect: only the requests in flight at the moment of the fault fail, each with a JSON 503
(never a hang past the function's timeout, never another 5xx), and service resumes on its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import pytest

from tests.conftest import Router, alive, http, running_router, wait_for
from tests.integration.test_limits import invoke, key, private_function
from tests.services import RedisServer

pytestmark = pytest.mark.slow

TIMEOUT = 30  # the example's spec.timeout


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int
    body: object


@contextmanager
def load(call: Callable[[], tuple[int, object]], clients: int) -> Iterator[list[Outcome]]:
    """``clients`` threads calling ``call`` back to back until the block ends; yields the outcomes so far."""
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, body = call()
            except (OSError, HTTPException) as exc:  # the router itself is gone (a test that kills
                # it): refused, reset, or cut off in the middle of an answer
                status, body = 0, str(exc)
            outcomes.append(Outcome(started, time.monotonic(), status, body))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT + 15)
        assert not any(t.is_alive() for t in threads), "a client hung"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def predict(router: Router, headers: dict[str, str]) -> Callable[[], tuple[int, object]]:
    def call() -> tuple[int, object]:
        status, _, body = invoke(router, headers, timeout=TIMEOUT + 10)
        return status, body

    return call


def test_a_replica_killed_under_load_fails_only_the_requests_in_flight(tmp_path: Path, warm_dir: Path) -> None:
    with running_router(tmp_path / "state", env={"FNSERVE_AUTOSCALE_TICK": "0.5"}) as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        (victim,) = router.replica_pids()
        (replica,) = json.loads(router.cli("status", "private", "--json", check=True).stdout)["replicas"]
        port = int(replica["url"].rsplit(":", 1)[1])
        with load(predict(router, router.admin), clients=8) as outcomes:
            wait_for(lambda: len(outcomes) > 50, 30, "load before the kill")
            os.kill(victim, signal.SIGKILL)
            # dead means its sockets are closed: that is after the last of its threads exits, which can be
            # milliseconds after /proc shows the process as a zombie
            wait_for(lambda: not alive(victim) and refused(port), 5, "the replica to die", interval=0.001)
            died = time.monotonic()
            wait_for(lambda: any(o.started > died and o.status == 200 for o in outcomes), 10, "serving again")
            wait_for(lambda: sum(o.started > died for o in outcomes) > 50, 30, "load after the kill")
    failed = [o for o in outcomes if o.status != 200]
    assert len(failed) <= 8, failed  # at most the one request each client had in flight
    late = [(round(o.started - died, 4), o.status, o.body) for o in failed if o.started >= died]
    assert not late, f"requests sent after the replica died failed: {late}"
    for o in failed:
        assert o.status == 503 and isinstance(o.body, dict) and isinstance(o.body.get("error"), str), o
    assert max(o.ended - o.started for o in outcomes) < TIMEOUT  # nothing hung
    resumed = min(o.ended for o in outcomes if o.started > died and o.status == 200)
    assert resumed - died < 2.0, f"service resumed {resumed - died:.2f} s after the replica died"


def usage_of(router: Router, key_id: str) -> int:
    rows = router.api.usage(key=key_id)["usage"]
    return sum(row["requests"] for row in rows)


def test_the_router_restarted_on_its_state_keeps_keys_usage_and_functions(tmp_path: Path, warm_dir: Path) -> None:
    state = tmp_path / "state"
    with running_router(state) as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        key_id, headers = key(router, "--rps", "1000", "--daily", "100000")
        with load(predict(router, headers), clients=4) as outcomes:
            wait_for(lambda: len(outcomes) > 100, 30, "load before the crash")
            counted = len(outcomes)
            time.sleep(1.5)  # the ledger is flushed every second: what was answered before this is on disk
            router.stop(signal.SIGKILL)
        assert {o.status for o in outcomes[:counted]} == {200}
    with running_router(state) as again:  # a crash: keys and functions intact, usage up to the last flush
        after_crash = usage_of(again, key_id)
        assert counted <= after_crash <= len(outcomes)
        probes: list[int] = []
        wait_for(lambda: probes.append(invoke(again, headers)[0]) or probes[-1] == 200, 30,
                 "the function to serve after the crash")
        with load(predict(again, headers), clients=4) as more:
            wait_for(lambda: len(more) > 50, 30, "load after the restart")
        assert {o.status for o in more} == {200}
        sent = after_crash + len(probes) + len(more)
    with running_router(state) as third:  # a clean stop flushes everything: usage is exact
        assert usage_of(third, key_id) == sent
        assert [k["id"] for k in third.api.keys()["keys"] if k["id"] == key_id] == [key_id]
        functions = third.api.functions()["functions"]
        assert [f["name"] for f in functions] == ["private"]
        assert invoke(third, headers)[0] == 200


def test_redis_killed_mid_load_fails_open_without_a_server_error(tmp_path: Path, warm_dir: Path,
                                                                  redis_server: RedisServer) -> None:
    with running_router(tmp_path / "state", env={"FNSERVE_REDIS_URL": redis_server.url}) as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        _, headers = key(router, "--rps", "20", "--burst", "5", "--concurrency", "2")
        with load(predict(router, headers), clients=4) as outcomes:
            wait_for(lambda: len(outcomes) > 40, 30, "load before Redis goes")
            assert any(o.status == 429 for o in outcomes)  # the limits are enforced through Redis
            assert redis_server.process is not None
            redis_server.process.kill()
            redis_server.process.wait(10)
            gone = time.monotonic()
            wait_for(lambda: sum(o.started > gone + 1.0 for o in outcomes) > 40, 30, "load without Redis")
        metrics = http("GET", f"{router.url}/metrics", headers=router.admin)[2].decode()
    skipped = dict(re.findall(r'^fnserve_limiter_fail_open_total\{limit="(\w+)"\} (\S+)$', metrics, re.M))
    assert float(skipped["rate"]) >= 40 and float(skipped["concurrency"]) >= 40, skipped  # each check without Redis
    assert {o.status for o in outcomes} <= {200, 429}, {o.status for o in outcomes}
    after = [o for o in outcomes if o.started > gone + 1.0]
    assert after and {o.status for o in after} == {200}  # failing open: nothing is limited any more
    assert max(o.ended - o.started for o in outcomes) < TIMEOUT
    assert "failing open" in router.log()
