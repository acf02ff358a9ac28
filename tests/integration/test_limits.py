"""Per-key limits and the usage ledger through a real router and replicas."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Router, function_copy, http, running_router, wait_for

pytestmark = pytest.mark.slow


def private_function(source: Path, target: Path, **spec: Any) -> Path:
    """A private copy named "private" with one standing replica."""
    return function_copy(source, target, name="private", auth={"public": False},
                         **{"scaling": {"minReplicas": 1, "maxReplicas": 1}, **spec})


def key(router: Router, *flags: str) -> tuple[str, dict[str, str]]:
    created = json.loads(router.cli("keys", "create", "--name", "t", "--json", *flags, check=True).stdout)
    return created["key"]["id"], {"Authorization": f"Bearer {created['token']}"}


def invoke(router: Router, headers: dict[str, str] | None, name: str = "private",
           timeout: float = 60) -> tuple[int, Any, Any]:
    return http("POST", f"{router.url}/v1/models/{name}:predict", {"instances": ["a fine film"]},
                headers=headers, timeout=timeout)


def test_rate_limit_answers_429_with_headers_and_counts_usage(tmp_path: Path, warm_dir: Path) -> None:
    with running_router(tmp_path / "state") as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        key_id, auth = key(router, "--rps", "0.1", "--burst", "3")
        results = [invoke(router, auth) for _ in range(5)]
        assert [code for code, _, _ in results] == [200, 200, 200, 429, 429]
        ok_headers = results[0][1]
        assert ok_headers["RateLimit-Policy"] == '"default";q=3;w=30'
        assert ok_headers["RateLimit"].startswith('"default";r=2;t=')
        assert ok_headers["X-RateLimit-Limit"] == "3" and ok_headers["X-RateLimit-Remaining"] == "2"
        code, headers, body = results[3]
        assert 1 <= int(headers["Retry-After"]) <= 10
        assert headers["X-RateLimit-Remaining"] == "0"
        assert body["limit"] == "rate" and body["keyId"] == key_id
        assert body["error"] == f"rate limit reached for API key {key_id}: 0.1 requests/s with bursts of 3"
        assert auth["Authorization"].split("_")[-1] not in json.dumps(body)

        usage = json.loads(router.cli("usage", "--key", key_id, "--json", check=True).stdout)["usage"]
        assert len(usage) == 1
        row = usage[0]
        assert (row["function"], row["requests"], row["clientErrors"], row["serverErrors"]) == ("private", 5, 2, 0)
        assert row["p95Ms"] > 0 and 0 < row["predictorMs"] <= row["totalMs"]
        assert key_id in router.cli("usage", "--function", "private", check=True).stdout


def test_concurrency_limit(tmp_path: Path, warm_dir: Path) -> None:
    with running_router(tmp_path / "state") as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        key_id, auth = key(router, "--concurrency", "1")
        (pid,) = router.replica_pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(invoke, router, auth)
                wait_for(lambda: json.loads(router.cli("status", "private", "--json").stdout)["replicas"][0]
                         ["outstanding"] == 1, 10, "the first request to be in flight")
                code, headers, body = invoke(router, auth)
                assert code == 429 and headers["Retry-After"] == "1"
                assert body["limit"] == "concurrency" and body["keyId"] == key_id
                os.kill(pid, signal.SIGCONT)
                assert held.result(timeout=30)[0] == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        assert invoke(router, auth)[0] == 200  # the slot was given back


def test_daily_quota_survives_a_restart_and_tenant_defaults_apply(tmp_path: Path, warm_dir: Path) -> None:
    state = tmp_path / "state"
    with running_router(state) as router:
        router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        key_id, auth = key(router, "--daily", "3")
        assert [invoke(router, auth)[0] for _ in range(2)] == [200, 200]
        router.cli("tenants", "set", "acme", "--rps", "0.01", "--burst", "1", check=True)
        _, acme = key(router, "--tenant", "acme")
        assert [invoke(router, acme)[0] for _ in range(2)] == [200, 429]  # the tenant's default rate
        assert "acme" in router.cli("tenants", "ls", check=True).stdout
    with running_router(state) as router:
        assert invoke(router, auth)[0] == 200
        code, headers, body = invoke(router, auth)
        assert code == 429 and body["limit"] == "daily"
        assert 0 < int(headers["Retry-After"]) <= 86400


def test_public_functions_are_limited_per_client_address(tmp_path: Path, example_dir: Path) -> None:
    fn = function_copy(example_dir, tmp_path / "fn", limits={"rps": 0.01, "burst": 2})
    with running_router(tmp_path / "state") as router:
        router.cli("deploy", str(fn), check=True)
        codes = [invoke(router, None, "sentiment")[0] for _ in range(3)]
        assert codes == [200, 200, 429]
        body = invoke(router, None, "sentiment")[2]
        assert body["limit"] == "rate" and "client 127.0.0.1" in body["error"] and "keyId" not in body
