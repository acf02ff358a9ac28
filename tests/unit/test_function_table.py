"""The function table's canary split and how a router takes in another router's changes, over a real
SQLite store and a serving backend that records what it was asked to do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fnserve.accounting import Tally
from fnserve.records import Revision
from fnserve.router.redis_counters import _fields, tallies_of
from fnserve.router.services.audit import AuditLog
from fnserve.router.services.functions import FunctionService
from fnserve.settings import Settings
from fnserve.state import StateStore
from tests.unit.doubles import ScriptedServing
from tests.unit.test_admission_service import revision


class RecordingServing(ScriptedServing):
    def __init__(self, splits_traffic: bool = False) -> None:
        super().__init__(["http://127.0.0.1:1"])
        self.splits_traffic = splits_traffic
        self.calls: list[tuple[Any, ...]] = []

    async def apply(self, revision: Revision, *, verify: bool = True, canary: int = 0) -> None:
        self.calls.append(("apply", revision.number, canary))

    async def promote(self, name: str) -> None:
        self.calls.append(("promote", name))

    async def drop_canary(self, name: str) -> None:
        self.calls.append(("drop_canary", name))

    async def delete(self, name: str) -> None:
        self.calls.append(("delete", name))

    def follow(self, name: str, rollout: Any) -> None:
        self.calls.append(("follow", name, rollout.current.number if rollout else None))


def service(tmp_path: Path, serving: RecordingServing) -> FunctionService:
    state = StateStore(tmp_path / "fnserve.db")
    return FunctionService(Settings(state_dir=tmp_path), state, serving, AuditLog(state))


def test_a_canary_takes_exactly_its_percent_of_every_hundred_requests(tmp_path: Path) -> None:
    functions = service(tmp_path, RecordingServing())
    functions.table["sentiment"] = revision("sentiment", number=1)
    assert functions.pick("sentiment") == (functions.table["sentiment"], False)
    functions.canaries["sentiment"] = (revision("sentiment", number=2), 10)
    picks = [functions.pick("sentiment") for _ in range(1000)]
    assert all(r.number == (2 if canary else 1) for r, canary in picks)
    flags = [canary for _, canary in picks]
    assert all(sum(flags[i:i + 100]) == 10 for i in range(0, 1000, 100))
    assert functions.pick("other") == (None, False)


def test_a_backend_that_splits_traffic_itself_gets_every_request_as_the_functions(tmp_path: Path) -> None:
    functions = service(tmp_path, RecordingServing(splits_traffic=True))
    functions.table["sentiment"] = revision("sentiment", number=1)
    functions.canaries["sentiment"] = (revision("sentiment", number=2), 50)
    assert {functions.pick("sentiment")[1] for _ in range(10)} == {False}


def test_another_routers_changes_are_applied_to_this_routers_replicas(tmp_path: Path) -> None:
    serving = RecordingServing()
    here = service(tmp_path, serving)
    elsewhere = StateStore(tmp_path / "fnserve.db")  # another router's handle on the same database

    async def steps() -> None:
        elsewhere.publish(revision("sentiment", number=1))
        await here.sync()
        elsewhere.publish_canary(revision("sentiment", number=2), 25)
        await here.sync()
        assert here.pick("sentiment")[0] is not None and here.canaries["sentiment"][1] == 25
        elsewhere.end_canary("sentiment", promote=True)
        await here.sync()
        elsewhere.publish_canary(revision("sentiment", number=3), 5)
        await here.sync()
        elsewhere.end_canary("sentiment", promote=False)
        await here.sync()
        await here.sync()  # nothing changed: nothing done
        elsewhere.delete("sentiment")
        await here.sync()

    asyncio.run(steps())
    assert serving.calls == [("apply", 1, 0), ("apply", 2, 25), ("promote", "sentiment"), ("apply", 3, 5),
                             ("drop_canary", "sentiment"), ("delete", "sentiment")]
    assert here.table == {} and here.canaries == {}


def test_a_shared_backend_follows_what_another_router_applied(tmp_path: Path) -> None:
    serving = RecordingServing(splits_traffic=True)
    serving.shared = True
    here = service(tmp_path, serving)
    elsewhere = StateStore(tmp_path / "fnserve.db")
    elsewhere.publish(revision("sentiment", number=4))
    asyncio.run(here.sync())
    elsewhere.delete("sentiment")
    asyncio.run(here.sync())
    assert serving.calls == [("follow", "sentiment", 4), ("follow", "sentiment", None)] and here.table == {}


def test_a_function_this_router_is_changing_is_left_for_the_next_look(tmp_path: Path) -> None:
    serving = RecordingServing()
    here = service(tmp_path, serving)
    StateStore(tmp_path / "fnserve.db").publish(revision("sentiment", number=1))

    async def steps() -> tuple[bool, bool]:
        async with here._lock("sentiment"):  # a deploy in progress here
            busy = await here.sync()
        return busy, await here.sync()

    assert asyncio.run(steps()) == (False, True)
    assert serving.calls == [("apply", 1, 0)]


def test_a_usage_batch_reads_back_as_the_tallies_that_made_it() -> None:
    expected = Tally()
    fields: dict[str, float] = {}
    for status, ms, tokens in ((200, 12.5, 3), (429, 0.4, 0), (503, 80.0, 0), (200, 12.0, 0)):
        expected.add(status, ms, ms / 2, tokens, 2 * tokens)
        for name, value in _fields(("k1", "sentiment", "2026-12-06"), status, ms, ms / 2, tokens, 2 * tokens):
            fields[name] = fields.get(name, 0) + value
    tallies = tallies_of({name.encode(): str(value).encode() for name, value in fields.items()})
    assert tallies == {("k1", "sentiment", "2026-12-06"): expected}
