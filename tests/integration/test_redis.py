"""Limits shared through a real redis-server by two router processes, and the fail-open decision."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Router, http, running_router, wait_for
from tests.integration.test_limits import key, private_function
from tests.services import RedisServer

pytestmark = pytest.mark.slow


def admitted(routers: list[Router], headers: dict[str, str], seconds: float, threads: int = 4) -> int:
    """Requests answered 200 while ``threads`` clients send back to back, spread over ``routers``."""
    deadline = time.monotonic() + seconds
    counts = [0] * threads

    def client(i: int) -> None:
        target = routers[i % len(routers)]
        while time.monotonic() < deadline:
            code = http("POST", f"{target.url}/v1/models/private:predict", {"instances": ["fine"]}, headers=headers)[0]
            counts[i] += code == 200

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts)


def test_two_routers_share_one_budget(tmp_path: Path, warm_dir: Path, redis_server: RedisServer) -> None:
    state, env = tmp_path / "state", {"FNSERVE_REDIS_URL": redis_server.url}
    with running_router(state, env=env) as a:
        a.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        _, one_key = key(a, "--rps", "10", "--burst", "10")
        _, two_key = key(a, "--rps", "10", "--burst", "10")
        with running_router(state, env=env) as b:  # restores the function from the shared state
            wait_for(lambda: http("POST", f"{b.url}/v1/models/private:predict", {"instances": ["x"]},
                                  headers=b.admin)[0] == 200, 60, "the second router to serve")
            one = admitted([a], one_key, 8)
            two = admitted([a, b], two_key, 8)
    assert one >= 80  # 10 at once + 10/s for 8 s, give or take the last arrival
    assert abs(two - one) <= max(2, 0.02 * one), (one, two)


def test_limits_fail_open_when_redis_is_down(tmp_path: Path, warm_dir: Path, redis_server: RedisServer) -> None:
    with running_router(tmp_path / "state", env={"FNSERVE_REDIS_URL": redis_server.url}) as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        _, auth = key(router, "--rps", "0.01", "--burst", "1")

        def call() -> int:
            return http("POST", f"{router.url}/v1/models/private:predict", {"instances": ["x"]}, headers=auth)[0]

        assert [call(), call()] == [200, 429]
        redis_server.stop()
        assert [call() for _ in range(3)] == [200, 200, 200]  # admitted while the limiter's store is down
        assert "Redis is unreachable" in router.log() and "failing open" in router.log()
        redis_server.start()  # a fresh, empty Redis: the bucket starts full again
        wait_for(lambda: call() == 429, 15, "limits to be enforced again")
        assert json.loads(router.cli("keys", "ls", "--json", check=True).stdout)["keys"]  # auth never lapsed
