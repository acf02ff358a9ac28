"""Canary rollouts through a real router and replicas: the split, promote and rollback under load."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Router, http, running_router
from tests.integration.test_limits import private_function

pytestmark = pytest.mark.slow


def call(router: Router) -> tuple[int, str]:
    status, headers, _ = http("POST", f"{router.url}/v1/models/private:predict", {"instances": ["a fine film"]},
                              headers=router.admin, timeout=60)
    return status, headers.get("X-Fnserve-Revision", "")


def spread(router: Router, total: int, threads: int = 8) -> Counter[tuple[int, str]]:
    """(status, revision) of ``total`` requests sent by ``threads`` clients."""
    seen: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()
    left = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            answer = call(router)
            with lock:
                seen[answer] += 1

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return seen


class Background:
    """Requests sent back to back while a test changes the rollout; every answer is kept."""

    def __init__(self, router: Router, threads: int = 4) -> None:
        self.router, self.seen, self.stopping = router, Counter[tuple[int, str]](), threading.Event()
        self.pool = [threading.Thread(target=self._client) for _ in range(threads)]

    def _client(self) -> None:
        while not self.stopping.is_set():
            try:
                answer: Any = call(self.router)
            except Exception as exc:  # no answer at all: counted, so the test sees it
                answer = (type(exc).__name__, "")
            self.seen[answer] += 1

    def __enter__(self) -> Background:
        for thread in self.pool:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.pool:
            thread.join()


def audit_actions(router: Router) -> list[tuple[str, str, str]]:
    entries = json.loads(router.cli("audit", "--action", "function.", "--json", check=True).stdout)["entries"]
    return [(e["action"], e["actor"], e["outcome"]) for e in entries]


def test_a_canary_takes_its_share_and_is_promoted_or_dropped_under_load(tmp_path: Path, warm_dir: Path) -> None:
    folder = private_function(warm_dir, tmp_path / "fn")
    with running_router(tmp_path / "state") as router:
        router.cli("deploy", str(folder), check=True)
        refused = router.cli("deploy", str(folder), "--canary", "150")
        assert refused.returncode == 2 and "1 to 99" in refused.stderr  # argparse's own exit status
        out = router.cli("deploy", str(folder), "--canary", "10", check=True).stdout
        assert "revision 2" in out and "10% of the requests as a canary" in out

        split = spread(router, 2000)
        assert set(split) <= {(200, "1"), (200, "2")}, split
        share = split[(200, "2")] / 2000
        assert abs(share - 0.10) <= 0.02, split

        status = router.cli("status", "private", check=True).stdout
        assert "canary" in status and "10%" in status and "90%" in status
        traffic = router.api.function("private")["traffic"]
        assert [(t["revision"], t["percent"], t["canary"]) for t in traffic] == [(1, 90, False), (2, 10, True)]
        assert traffic[1]["requests"] == split[(200, "2")] and traffic[1]["errors"] == 0

        with Background(router) as during:
            spread(router, 100, threads=2)  # the load is under way on both revisions
            assert "revision 2 promoted" in router.cli("promote", "private", check=True).stdout
            spread(router, 100, threads=2)
        assert {status for status, _ in during.seen} == {200}, during.seen  # not one request failed
        assert set(spread(router, 200)) == {(200, "2")}

        router.cli("deploy", str(folder), "--canary", "50", check=True)
        with Background(router) as during:
            spread(router, 100, threads=2)
            assert "canary revision 3 dropped" in router.cli("rollback", "private", check=True).stdout
            spread(router, 100, threads=2)
        assert {status for status, _ in during.seen} == {200}, during.seen
        assert {revision for _, revision in during.seen} == {"2", "3"}
        assert set(spread(router, 200)) == {(200, "2")}

        promote_again = router.cli("promote", "private")
        assert promote_again.returncode == 1 and "no canary" in promote_again.stderr
        admin_id = router.admin_key.split("_")[1]
        assert audit_actions(router) == [
            ("function.deploy", admin_id, "ok"), ("function.deploy", admin_id, "ok"),
            ("function.promote", admin_id, "ok"), ("function.deploy", admin_id, "ok"),
            ("function.rollback", admin_id, "ok"),
            ("function.promote", admin_id, "private: no canary to promote (deploy one with --canary N)")]


def test_a_canary_needs_a_current_revision(tmp_path: Path, warm_dir: Path) -> None:
    with running_router(tmp_path / "state") as router:
        result = router.cli("deploy", str(private_function(warm_dir, tmp_path / "fn")), "--canary", "10")
        assert result.returncode == 1 and "deploy it without --canary first" in result.stderr
        assert router.api.functions()["functions"] == []
        status, _, body = http("POST", f"{router.url}/api/functions", {"manifest": {}, "canary": 0},
                               headers=router.admin)
        assert status == 400 and "canary" in body["error"]
