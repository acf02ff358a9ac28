"""The activator with replicas that are never started: dispatch to the least-busy ready replica under
containerConcurrency, the bounded queue (503 when full), the deadline (504), waiting requests handed a
replica as one frees up or becomes ready, the cold-start time reported for requests that waited for a
first replica, and every queued or in-flight request counted for the autoscaler.

Replicas are real :class:`Replica` objects whose state the tests set by hand (no process is started);
the activator's monotonic clock is a fake the tests move, except where its real deadline is the point.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fnserve.backends.base import NoReadyReplica
from fnserve.backends.local import activator as activator_module
from fnserve.backends.local.activator import ActivationTimeout, Activator, QueueFull
from fnserve.backends.local.autoscaler import ConcurrencyRecorder
from fnserve.backends.local.replica import Replica
from fnserve.manifest import parse_function
from fnserve.records import Revision
from tests.unit.test_manifest import VALID

T = TypeVar("T")


class FakeTime:
    """Stands in for the ``time`` module in activator.py."""

    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(activator_module, "time", fake)
    return fake


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def replica(tmp_path: Path, state: str = "ready") -> Replica:
    revision = Revision(parse_function(VALID), 1, tmp_path, tmp_path, time.time())
    made = Replica(revision, tmp_path / "function.yaml", tmp_path / "logs")
    made.state = state
    return made


def activator(replicas: list[Replica], *, concurrency: int = 1, queue_limit: int = 100, timeout: float = 60.0,
              now: float = 5000.0) -> Activator:
    made = Activator("sentiment", concurrency, queue_limit, timeout, ConcurrencyRecorder(now, 60))
    made.replicas.extend(replicas)
    return made


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the other tasks run until ``condition`` holds (they need only a few turns of the loop)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def waiting(act: Activator, n: int) -> list[asyncio.Task[tuple[Replica, float | None]]]:
    """``n`` acquires that queue, in order, once each is in the queue."""
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.ensure_future(act.acquire()))
        await until(lambda: act.queued == len(tasks), f"{len(tasks)} queued")
    return tasks


def test_requests_go_to_the_least_busy_ready_replica_with_room(tmp_path: Path, clock: FakeTime) -> None:
    replicas = [replica(tmp_path) for _ in range(3)]
    starting = replica(tmp_path, "starting")
    draining = replica(tmp_path, "draining")

    async def scenario() -> None:
        act = activator([starting, *replicas, draining], concurrency=2)
        first = [(await act.acquire())[0] for _ in range(3)]
        assert sorted(r.id for r in first) == sorted(r.id for r in replicas)  # one each before any gets two
        act.release(first[1])
        again, cold = await act.acquire()
        assert again is first[1] and cold is None  # the one with the fewest outstanding
        for _ in range(3):
            await act.acquire()
        assert [r.outstanding for r in replicas] == [2, 2, 2]
        assert starting.outstanding == 0 and draining.outstanding == 0
        assert act.queued == 0 and act.recorder.value == 6
        queued = await waiting(act, 1)  # every replica is at containerConcurrency: the next one waits
        assert not queued[0].done() and act.recorder.value == 7
        queued[0].cancel()

    run(scenario())


def test_without_container_concurrency_nothing_waits_for_a_ready_replica(tmp_path: Path, clock: FakeTime) -> None:
    replicas = [replica(tmp_path) for _ in range(2)]

    async def scenario() -> None:
        act = activator(replicas, concurrency=0)
        for _ in range(50):
            await act.acquire()
        assert [r.outstanding for r in replicas] == [25, 25] and act.queued == 0

    run(scenario())


def test_a_freed_replica_goes_to_the_oldest_waiting_request(tmp_path: Path, clock: FakeTime) -> None:
    only = replica(tmp_path)

    async def scenario() -> None:
        act = activator([only], concurrency=1)
        held, _ = await act.acquire()
        first, second = await waiting(act, 2)
        clock.now += 3.0
        act.release(held)
        assert await first == (only, None)  # it waited, but for a busy replica, not a cold start
        assert not second.done() and act.queued == 1
        act.release(only)
        assert await second == (only, None)
        act.release(only)
        assert act.idle() and only.outstanding == 0 and act.recorder.value == 0

    run(scenario())


def test_a_request_that_waited_for_the_first_replica_reports_its_cold_start(tmp_path: Path,
                                                                            clock: FakeTime) -> None:
    booting = replica(tmp_path, "starting")

    async def scenario() -> None:
        act = activator([booting], concurrency=4)
        cold, also_cold = await waiting(act, 2)
        assert act.recorder.value == 2  # waiting requests ask the autoscaler for a replica
        clock.now += 0.75
        booting.state = "ready"
        act.dispatch()  # what the backend does when a replica becomes ready
        assert await cold == (booting, 750.0)
        assert await also_cold == (booting, 750.0)
        assert booting.outstanding == 2 and act.queued == 0

    run(scenario())


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path, clock: FakeTime) -> None:
    async def scenario() -> None:
        act = activator([replica(tmp_path, "starting")], queue_limit=2)
        tasks = await waiting(act, 2)
        with pytest.raises(QueueFull) as caught:
            await act.acquire()
        assert caught.value.status == 503 and caught.value.retry_after == 1
        assert str(caught.value) == "function 'sentiment': 2 requests are already waiting"
        assert act.queued == 2 and act.recorder.value == 2  # the refused request was never counted
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert act.queued == 0 and act.recorder.value == 0

    run(scenario())


def test_a_request_no_replica_takes_in_time_answers_504_and_leaves_the_queue(tmp_path: Path) -> None:
    async def scenario() -> None:
        booting = replica(tmp_path, "starting")
        act = activator([booting], timeout=0.05, now=time.monotonic())
        started = time.monotonic()
        with pytest.raises(ActivationTimeout) as caught:
            await act.acquire()
        assert time.monotonic() - started >= 0.05
        assert caught.value.status == 504
        assert str(caught.value) == "function 'sentiment': no replica could take the request within 0.05 s"
        assert act.queued == 0 and act.recorder.value == 0
        booting.state = "ready"
        act.dispatch()
        assert booting.outstanding == 0  # nothing is handed to the request that gave up

    run(scenario())


def test_a_request_cancelled_while_waiting_takes_no_replica(tmp_path: Path, clock: FakeTime) -> None:
    booting = replica(tmp_path, "starting")

    async def scenario() -> None:
        act = activator([booting])
        gone, stays = await waiting(act, 2)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert act.queued == 1 and act.recorder.value == 1
        booting.state = "ready"
        act.dispatch()
        assert (await stays)[0] is booting and booting.outstanding == 1

    run(scenario())


def test_a_replica_handed_to_a_request_cancelled_at_that_moment_is_given_back(tmp_path: Path,
                                                                              clock: FakeTime) -> None:
    only = replica(tmp_path)

    async def scenario() -> None:
        act = activator([only], concurrency=1)
        held, _ = await act.acquire()
        (waiter,) = await waiting(act, 1)
        waiter.cancel()  # the request goes away (it has not run since)…
        act.release(held)  # …and the freed replica is handed to it all the same
        assert only.outstanding == 1
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()
        assert only.outstanding == 0 and act.recorder.value == 0 and act.idle()

    run(scenario())


def test_when_nothing_can_start_the_queue_is_answered_at_once(tmp_path: Path, clock: FakeTime) -> None:
    async def scenario() -> None:
        act = activator([replica(tmp_path, "failed")])
        tasks = await waiting(act, 3)
        act.fail_waiting("function 'sentiment' has no ready replica: exited with code 1")
        for task in tasks:
            with pytest.raises(NoReadyReplica) as caught:
                await task
            assert caught.value.status == 503 and caught.value.retry_after == 1
            assert "exited with code 1" in str(caught.value)
        assert act.queued == 0 and act.recorder.value == 0

    run(scenario())


def test_a_new_revision_adopts_the_requests_waiting_on_the_old_one(tmp_path: Path, clock: FakeTime) -> None:
    new_replica = replica(tmp_path)

    async def scenario() -> None:
        old = activator([replica(tmp_path, "starting")])
        first, second = await waiting(old, 2)
        new = activator([new_replica], concurrency=1)
        clock.now += 1.25
        new.adopt(old)
        assert await first == (new_replica, 1250.0)  # it waited for a cold start, then for the new revision
        assert old.queued == 0 and old.recorder.value == 0
        assert new.queued == 1 and new.recorder.value == 2  # one in flight, one waiting, both counted here
        new.release(new_replica)
        assert await second == (new_replica, 1250.0)
        new.release(new_replica)
        assert new.idle() and new.recorder.value == 0

    run(scenario())


def test_an_adopted_request_that_times_out_leaves_the_new_queue(tmp_path: Path) -> None:
    async def scenario() -> None:
        old = activator([replica(tmp_path, "starting")], timeout=0.05, now=time.monotonic())
        task = asyncio.ensure_future(old.acquire())
        await until(lambda: old.queued == 1, "queued on the old revision")
        new = activator([replica(tmp_path, "starting")], now=time.monotonic())
        new.adopt(old)
        with pytest.raises(ActivationTimeout):
            await task
        assert new.queued == 0 and new.recorder.value == 0 and old.recorder.value == 0

    run(scenario())
