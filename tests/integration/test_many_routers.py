"""Three `fnserve up` processes — own ports, own state dirs — sharing one real PostgreSQL and one real
redis-server: what one router is told, every router does."""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Router, alive, http, running_router, wait_for
from tests.integration.test_limits import invoke, key, private_function

pytestmark = pytest.mark.slow


def shared_env(tmp_path: Path, database_url: str, redis_url: str | None) -> dict[str, str]:
    """What routers that share one truth share: the database, Redis, the pepper and the admin key."""
    pepper, admin = tmp_path / "pepper", tmp_path / "admin-token"
    if not pepper.exists():
        pepper.write_bytes(secrets.token_bytes(32))
        admin.write_text(f"fns_{secrets.token_hex(6)}_{secrets.token_hex(20)}\n")
    env = {"FNSERVE_DATABASE_URL": database_url, "FNSERVE_PEPPER_FILE": str(pepper),
           "FNSERVE_ADMIN_KEY_FILE": str(admin)}
    if redis_url:
        env["FNSERVE_REDIS_URL"] = redis_url
    return env


@contextmanager
def routers(tmp_path: Path, env: dict[str, str], count: int = 3) -> Iterator[list[Router]]:
    with ExitStack() as stack:
        started = []
        for i in range(count):
            state = tmp_path / f"state-{i}"
            state.mkdir(parents=True, exist_ok=True)
            (state / "admin.key").write_text(Path(env["FNSERVE_ADMIN_KEY_FILE"]).read_text())
            started.append(stack.enter_context(running_router(state, env=env)))
        yield started


def serving(router: Router, auth: dict[str, str], name: str = "private") -> bool:
    return invoke(router, auth, name)[0] == 200


def deploy_everywhere(three: list[Router], warm_dir: Path, tmp_path: Path) -> None:
    """The private function deployed through the first router, and served by every one (each starts a
    replica of its own: the first request may wait for it)."""
    three[0].cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
    for r in three:
        wait_for(lambda r=r: serving(r, r.admin), 60, f"{r.url} to serve the function")


def answered_by(router: Router, requests: int = 10) -> set[str]:
    """The revisions that answered ``requests`` calls (X-Fnserve-Revision)."""
    return {http("POST", f"{router.url}/v1/models/private:predict", {"instances": ["fine"]},
                 headers=router.admin)[1].get("X-Fnserve-Revision", "") for _ in range(requests)}


def elapsed_until(predicate: Any, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds, polled every 20 ms."""
    start = time.monotonic()
    wait_for(predicate, timeout, what, interval=0.02)
    return time.monotonic() - start


def test_keys_and_deploys_made_through_one_router_hold_on_every_router(
        tmp_path: Path, warm_dir: Path, database_url: str, redis_server: Any) -> None:
    env = shared_env(tmp_path, database_url, redis_server.url)
    with routers(tmp_path, env) as (a, b, c):
        a.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
        seen = [elapsed_until(lambda r=r: any(f["name"] == "private" for f in r.api.functions()["functions"]), 2,
                              "the deploy to reach another router") for r in (b, c)]
        for other in (b, c):  # each router runs its own replica of it: the first request may wait for it
            wait_for(lambda r=other: serving(r, r.admin), 60, f"{other.url} to serve the function")

        key_id, auth = key(b, "--scope", "invoke:private")  # created on b ...
        assert all(serving(r, auth) for r in (a, b, c))  # ... works on all three at once

        c.cli("keys", "revoke", key_id, check=True)  # revoked on c ...
        refused = [elapsed_until(lambda r=r: invoke(r, auth)[0] == 401, 1.0, "the revocation to reach a router")
                   for r in (a, b)]  # ... refused on all within 1 s
        assert invoke(c, auth)[0] == 401

        rotated_id, rotated = key(a)
        assert all(serving(r, rotated) for r in (a, c))  # verified, so cached, on both
        token = json.loads(b.cli("keys", "rotate", rotated_id, "--grace", "1s", "--json", check=True).stdout)["token"]
        new_auth = {"Authorization": f"Bearer {token}"}
        for other in (a, c):  # the new secret works everywhere within 1 s; the old one ends with its grace
            elapsed_until(lambda r=other: serving(r, new_auth), 1.0, "the rotation to reach a router")
        for other in (a, c):
            elapsed_until(lambda r=other: invoke(r, rotated)[0] == 401, 2.0, "the old secret's grace to end")

        folder = tmp_path / "fn"
        a.cli("deploy", str(folder), check=True)  # revision 2 through a ...
        c.cli("rollback", "private", check=True)  # ... rolled back to 1 through c
        rolled = [elapsed_until(lambda r=r: r.api.function("private")["revision"] == 1, 2,
                                "the rollback to reach another router") for r in (a, b)]
        for other in (a, b):
            wait_for(lambda r=other: answered_by(r) == {"1"}, 30, "revision 1 to answer everywhere")

        a.cli("deploy", str(folder), "--canary", "50", check=True)  # revision 3 as a canary, through a
        for other in (b, c):  # every router splits, each with a canary replica of its own
            elapsed_until(lambda r=other: len(r.api.function("private")["traffic"]) == 2, 2,
                          "the canary to reach another router")
            wait_for(lambda r=other: answered_by(r) == {"1", "3"}, 30, "both revisions to answer")
        b.cli("promote", "private", check=True)
        for other in (a, c):
            wait_for(lambda r=other: answered_by(r) == {"3"}, 30, "the promotion to reach another router")

        b.cli("rm", "private", check=True)
        gone = [elapsed_until(lambda r=r: invoke(r, r.admin)[0] == 404, 2, "the removal to reach a router")
                for r in (a, c)]
        print(f"deploy seen after {seen} s, revocation after {refused} s, rollback after {rolled} s, "
              f"removal after {gone} s")


def load(targets: list[Router], auth: dict[str, str], total: int, threads: int) -> dict[str, Counter[Any]]:
    """``total`` requests from ``threads`` clients, spread over ``targets`` round robin; the answers per
    router (status codes, or the exception's name when there was no answer)."""
    taken = iter(range(total))
    lock = threading.Lock()
    answers: dict[str, Counter[Any]] = {r.url: Counter() for r in targets}

    def client(i: int) -> None:
        target = targets[i % len(targets)]
        while True:
            with lock:
                if next(taken, None) is None:
                    return
            try:
                code: Any = invoke(target, auth, timeout=30)[0]
            except Exception as exc:  # no answer: refused, reset, or cut off mid-answer (IncompleteRead)
                code = type(exc).__name__
            with lock:
                answers[target.url][code] += 1

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return answers


def usage_of(router: Router, key_id: str) -> dict[str, int]:
    rows = router.api.usage(key=key_id)["usage"]
    return {field: sum(r[field] for r in rows) for field in ("requests", "clientErrors", "serverErrors")}


def test_a_daily_quota_holds_across_three_routers_and_usage_adds_up(
        tmp_path: Path, warm_dir: Path, database_url: str, redis_server: Any) -> None:
    env = shared_env(tmp_path, database_url, redis_server.url)
    with routers(tmp_path, env) as three:
        deploy_everywhere(three, warm_dir, tmp_path)
        key_id, auth = key(three[1], "--daily", "1000")
        answers = load(three, auth, 1300, threads=12)
        codes = sum(answers.values(), Counter())
        assert set(codes) <= {200, 429}, codes
        assert 1000 <= codes[200] <= 1005, codes
        assert all(a[200] > 150 for a in answers.values()), answers  # every router admitted its share
        usage = usage_of(three[2], key_id)
        assert usage["requests"] == 1300 and usage["requests"] - usage["clientErrors"] == codes[200], (usage, codes)
        # what the console's quota bar says: the one count in Redis, whichever router is asked
        used = {r.url: next(b["used"] for b in http("GET", f"{r.url}/api/keys/{key_id}/quota", headers=r.admin)[2]["bars"]
                            if b["limit"] == "daily") for r in three}
        assert len(set(used.values())) == 1 and 1000 <= min(used.values()) <= codes[200], (used, codes)


def test_a_router_killed_mid_load_loses_no_answered_request(
        tmp_path: Path, warm_dir: Path, database_url: str, redis_server: Any) -> None:
    env = shared_env(tmp_path, database_url, redis_server.url)
    with routers(tmp_path, env) as three:
        deploy_everywhere(three, warm_dir, tmp_path)
        key_id, auth = key(three[0])
        victim = three[2]
        replicas = victim.replica_pids()
        result: dict[str, dict[str, Counter[Any]]] = {}
        loader = threading.Thread(target=lambda: result.update(answers=load(three, auth, 1500, threads=9)))
        loader.start()
        wait_for(lambda: usage_of(three[0], key_id)["requests"] > 300, 30, "the load to be under way")
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        loader.join(120)
        for pid in replicas:  # the dead router's replicas, orphaned
            if alive(pid):
                import os

                os.kill(pid, signal.SIGKILL)
        answers = result["answers"]
        survivors = [three[0].url, three[1].url]
        assert all(set(answers[url]) == {200} for url in survivors), answers  # the others kept serving
        answered = sum(answers[url][200] for url in answers)
        unanswered = sum(n for code, n in answers[victim.url].items() if code != 200)

        def successes() -> int:
            usage = usage_of(three[0], key_id)
            return usage["requests"] - usage["clientErrors"] - usage["serverErrors"]

        # every answer a client saw is on record once the batch the dead router held, if any, is merged by
        # another (2 s after it was taken); at most the requests the dead router held are extra
        wait_for(lambda: successes() >= answered, 10, f"the usage ledger to count {answered} answers")
        assert successes() <= answered + unanswered, answers
        assert unanswered > 0, answers  # the kill did land mid-load


def test_with_postgres_down_admin_calls_get_503_and_cached_keys_keep_working(
        tmp_path: Path, warm_dir: Path) -> None:
    from tests.services import PostgresServer

    database = PostgresServer().init().start()
    try:
        env = shared_env(tmp_path, database.new_database(), None)
        with routers(tmp_path, env, count=1) as (router,):
            router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), check=True)
            _, auth = key(router)
            _, unused = key(router)
            assert serving(router, auth)
            database.stop()
            status, _, body = http("GET", f"{router.url}/api/keys", headers=router.admin)
            assert status == 503 and "state database" in body["error"] and body["reason"] == "StoreUnavailable"
            status, _, body = http("POST", f"{router.url}/api/keys", {"name": "x"}, headers=router.admin)
            assert status == 503 and isinstance(body["error"], str)
            answers = [invoke(router, auth) for _ in range(20)]
            assert all(a[0] == 200 for a in answers), answers  # a key verified before keeps working
            status, _, body = invoke(router, unused)  # one never seen here cannot be checked: 503, not 401
            assert status == 503 and "state database" in body["error"]
            result = router.cli("keys", "ls")
            assert result.returncode == 5 and "state database" in result.stderr and "Traceback" not in result.stderr
            database.start()
            wait_for(lambda: http("GET", f"{router.url}/api/keys", headers=router.admin)[0] == 200, 15,
                     "admin calls to work again")
            assert serving(router, unused)
            assert "Traceback" not in router.log()
    finally:
        database.remove()
