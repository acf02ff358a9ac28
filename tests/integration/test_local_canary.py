"""A canary on the embedded backend, with real replica processes: it runs beside the serving revision on its
own track (own replicas, own scale from zero), is reached when the router asks for it, and is promoted
without a cold start or dropped. The two revisions serve models y = x · 1 and y = x · 3 (the scale test
function), so every answer says which revision gave it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fnserve.backends.base import DeployFailed, Endpoint, FunctionNotFound, NoCanary
from fnserve.backends.local import LocalBackend
from fnserve.backends.local.gpus import GpuInventory
from fnserve.manifest import load_function, parse_function
from fnserve.records import Revision
from fnserve.settings import Settings
from tests.conftest import ROOT, alive, http, run_job, wait_for

pytestmark = pytest.mark.slow
SCALE = ROOT / "tests" / "fixtures" / "scale"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two runs of the scale function's job, published as the platform would: factor → run folder."""
    root = tmp_path_factory.mktemp("scale-runs")
    found = {}
    for factor in (1, 3):
        code, outcome, log = run_job(SCALE / "train.yaml", (root / "scale").as_uri(), "--params",
                                     json.dumps({"scale": factor}))
        assert code == 0, log
        found[factor] = root / "scale" / outcome["runId"]
    return found


def revision(number: int, model_dir: Path, **scaling: Any) -> Revision:
    data = load_function(SCALE).to_dict()
    data["spec"]["model"]["uri"] = f"artifacts://scale/{model_dir.name}"
    data["spec"]["scaling"].update(scaling)
    return Revision(parse_function(data), number, SCALE, model_dir, 0.0)


async def answer(endpoint: Endpoint, x: float = 2.0) -> float:
    """What the replica behind ``endpoint`` computes for ``x`` (asked directly: no router here)."""
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}]}
    status, _, payload = await asyncio.to_thread(http, "POST", f"{endpoint.url}/v2/models/scale/infer", body,
                                                 {"Content-Type": "application/json"}, timeout=30)
    assert status == 200, payload
    return float(payload["outputs"][0]["data"][0])


async def served(backend: LocalBackend, canary: bool = False) -> tuple[Endpoint, float]:
    """One request's worth: a replica of the asked track, its answer, the replica given back."""
    endpoint = await backend.acquire("scale", canary=canary)
    try:
        return endpoint, await answer(endpoint)
    finally:
        backend.release(endpoint)


def revisions_running(backend: LocalBackend) -> dict[str, int]:
    """Replica id → revision of every replica that has not stopped."""
    return {r.id: r.revision for r in backend.status("scale").replicas}


def with_backend(tmp_path: Path, scenario: Callable[[LocalBackend], Awaitable[None]]) -> None:
    async def run() -> None:
        backend = LocalBackend(Settings.from_env(state_dir=tmp_path / "state"), GpuInventory([]))
        try:
            await scenario(backend)
        finally:
            await backend.close()

    asyncio.run(run())


def test_a_canary_serves_beside_the_revision_and_its_promotion_keeps_its_replicas(tmp_path: Path,
                                                                                  runs: dict[int, Path]) -> None:
    async def scenario(backend: LocalBackend) -> None:
        assert backend.splits_traffic is False  # the router picks the track of each request
        with pytest.raises(FunctionNotFound, match="serves no revision to run a canary beside"):
            await backend.apply(revision(2, runs[3]), canary=10)
        await backend.apply(revision(1, runs[1], minReplicas=1))
        await backend.apply(revision(2, runs[3], minReplicas=0), canary=10)
        status = backend.status("scale")
        assert (status.revision, status.canary_revision, status.canary_percent) == (1, 2, 10)
        assert status.to_dict()["canaryRevision"] == 2 and status.to_dict()["canaryPercent"] == 10
        assert list(revisions_running(backend).values()) == [1]  # the canary proved it starts, then went to zero

        canary, canary_answer = await served(backend, canary=True)
        main, main_answer = await served(backend)
        assert (canary_answer, main_answer) == (6.0, 2.0)
        assert canary.cold_start_ms is not None and main.cold_start_ms is None  # the canary woke on its own
        assert revisions_running(backend) == {main.replica: 1, canary.replica: 2}
        old_pid = next(r.pid for r in backend.status("scale").replicas if r.id == main.replica)

        await backend.promote("scale")
        status = backend.status("scale")
        assert (status.revision, status.canary_revision, status.canary_percent) == (2, None, 0)
        endpoint, value = await served(backend)
        assert (endpoint.replica, endpoint.cold_start_ms, value) == (canary.replica, None, 6.0)  # no cold start
        assert old_pid is not None
        await asyncio.to_thread(wait_for, lambda: revisions_running(backend) == {canary.replica: 2}
                                and not alive(old_pid), 15, "revision 1's replica to drain and exit")

        for action in (backend.promote, backend.drop_canary):
            with pytest.raises(NoCanary, match="function 'scale' has no canary to") as caught:
                await action("scale")
            assert caught.value.status == 409

    with_backend(tmp_path, scenario)


def test_a_failed_or_dropped_canary_leaves_the_revision_serving_and_delete_stops_both(
        tmp_path: Path, runs: dict[int, Path]) -> None:
    async def scenario(backend: LocalBackend) -> None:
        await backend.apply(revision(1, runs[1], minReplicas=1))
        await backend.apply(revision(2, runs[3], minReplicas=1), canary=10)
        (canary_replica,) = [rid for rid, number in revisions_running(backend).items() if number == 2]

        with pytest.raises(DeployFailed, match="scale revision 3 did not start"):
            await backend.apply(revision(3, tmp_path / "no-model", minReplicas=1), canary=30)
        status = backend.status("scale")
        assert (status.revision, status.canary_revision, status.canary_percent) == (1, 2, 10)
        assert (await served(backend, canary=True))[0].replica == canary_replica

        await backend.drop_canary("scale")
        status = backend.status("scale")
        assert (status.revision, status.canary_revision, status.canary_percent) == (1, None, 0)
        await asyncio.to_thread(wait_for, lambda: set(revisions_running(backend).values()) == {1}, 15,
                                "the canary's replica to drain")
        assert (await served(backend))[1] == 2.0
        assert (await served(backend, canary=True))[1] == 2.0  # picked for the canary a moment too late

        await backend.apply(revision(4, runs[3], minReplicas=1), canary=50)
        pids = [r.pid for r in backend.status("scale").replicas]
        assert len(pids) == 2
        await backend.delete("scale")
        await asyncio.to_thread(wait_for, lambda: not any(alive(pid) for pid in pids if pid is not None), 15,
                                "both tracks' replicas to exit")
        with pytest.raises(FunctionNotFound):
            backend.status("scale")

    with_backend(tmp_path, scenario)
