"""The state store, the same tests against both engines: SQLite in a state dir and a real PostgreSQL
server (tests.services.PostgresServer)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fnserve.accounting import Tally
from fnserve.database import StoreRefused, StoreUnavailable, UnsupportedDatabase, _redacted
from fnserve.records import AuditEntry, JobRecord, KeyRecord
from fnserve.state import StateStore
from tests.unit.test_admission_service import revision


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "fnserve.db"
    return str(request.getfixturevalue("database_url"))


@pytest.fixture
def store(location: str | Path) -> Iterator[StateStore]:
    opened = StateStore(location)
    try:
        yield opened
    finally:
        opened.close()


def test_reopening_applies_no_migration_twice(location: str | Path, store: StateStore) -> None:
    store.publish(revision("sentiment"))
    again = StateStore(location)  # a second router on the same database, or a restart
    try:
        assert [r.current.number for r in again.rollouts()] == [1]
        assert [row[0] for row in again.db.query("SELECT version FROM schema_migrations ORDER BY version")] == [1, 2]
    finally:
        again.close()


def test_a_canary_is_recorded_beside_the_current_revision_and_ends_by_promotion_or_drop(store: StateStore) -> None:
    store.publish(revision("sentiment", number=1))
    store.publish_canary(revision("sentiment", number=2), 10)
    (rollout,) = store.rollouts()
    assert (rollout.current.number, rollout.canary and rollout.canary.number, rollout.percent) == (1, 2, 10)
    store.end_canary("sentiment", promote=True)
    rollout = store.rollout("sentiment")
    assert rollout is not None and (rollout.current.number, rollout.canary, rollout.percent) == (2, None, 0)
    store.publish_canary(revision("sentiment", number=3), 25)
    store.end_canary("sentiment", promote=False)
    rollout = store.rollout("sentiment")
    assert rollout is not None and (rollout.current.number, rollout.canary) == (2, None)
    assert [r.number for r in store.revisions("sentiment")] == [1, 2, 3]
    assert store.activate("sentiment", 1) is not None
    rollout = store.rollout("sentiment")
    assert rollout is not None and (rollout.current.number, rollout.canary) == (1, None)


def test_every_change_another_router_must_see_bumps_its_topic(store: StateStore) -> None:
    before = store.versions()
    store.publish(revision("sentiment"))
    store.add_key(KeyRecord("a" * 12, "k", "default", ("invoke:*",), "hash"))
    store.revoke_key("a" * 12, 1.0)
    store.set_tenant_limits("acme", {"rps": 5})
    after = store.versions()
    assert after["functions"] == before.get("functions", 0) + 1
    assert after["keys"] == before.get("keys", 0) + 2
    assert after["tenants"] == before.get("tenants", 0) + 1
    store.delete("sentiment")
    assert store.versions()["functions"] == after["functions"] + 1 and store.rollouts() == []


def test_a_usage_batch_is_merged_exactly_once(store: StateStore) -> None:
    tally = Tally()
    tally.add(200, 5.0, 4.0, 3, 7)
    assert store.merge_usage({("k", "f", "2026-12-06"): tally}, batch="b1")
    assert not store.merge_usage({("k", "f", "2026-12-06"): tally}, batch="b1")  # retried after a crash
    ((_, _, _, stored),) = store.usage("k", None, None)
    assert (Tally.from_json(stored).requests, Tally.from_json(stored).completion_tokens) == (1, 7)


def test_concurrent_merges_lose_no_count(store: StateStore) -> None:
    """Routers merging their tallies at once into the same rows (a lost update would show as fewer)."""
    def merge(_: int) -> None:
        for _ in range(20):
            tally = Tally()
            tally.add(200, 1.0, 1.0)
            store.merge_usage({("k", "f", "2026-12-06"): tally, ("k", "g", "2026-12-06"): tally})

    threads = [threading.Thread(target=merge, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [Tally.from_json(row[3]).requests for row in store.usage("k", None, None)] == [120, 120]


def test_daily_counts_add_up_or_are_copied(store: StateStore) -> None:
    store.add_daily_counts({("k", "2026-12-06"): 3})
    store.add_daily_counts({("k", "2026-12-06"): 4})
    assert store.daily_count("k", "2026-12-06") == 7
    store.set_daily_counts({("k", "2026-12-06"): 9})  # a copy of Redis's count replaces, never adds ...
    assert store.daily_count("k", "2026-12-06") == 9
    store.set_daily_counts({("k", "2026-12-06"): 5})  # ... and an older copy arriving late moves nothing
    assert store.daily_count("k", "2026-12-06") == 9


def test_jobs_round_trip(store: StateStore) -> None:
    job = JobRecord("j1", "train", "sentiment", "queued", {"kind": "TrainingJob"}, "/src", {"epochs": 2},
                    "file:///runs", 1.0)
    store.save_job(job)
    job.state, job.metrics = "succeeded", {"accuracy": 0.9}
    store.save_job(job)
    assert store.job("j1") == job and store.jobs() == [job]


def test_the_audit_log_is_append_only_and_filtered(store: StateStore) -> None:
    for i, (actor, action) in enumerate([("a1", "key.create"), ("a2", "function.deploy"), ("a1", "key.revoke")]):
        store.append_audit(AuditEntry(100.0 + i, actor, action, f"t{i}", "ok", 200, f"r{i}", "127.0.0.1",
                                      {"scopes": ["invoke:*"]}))
    assert [e.action for e in store.audit()] == ["key.create", "function.deploy", "key.revoke"]
    assert [e.target for e in store.audit(actor="a1")] == ["t0", "t2"]
    assert [e.target for e in store.audit(action="key.")] == ["t0", "t2"]
    assert [e.target for e in store.audit(action="key.revoke")] == ["t2"]
    assert [e.target for e in store.audit(since=101.0)] == ["t1", "t2"]
    assert [e.target for e in store.audit(limit=1)] == ["t2"]  # the newest, when the log is longer than asked
    assert store.audit()[0].detail == {"scopes": ["invoke:*"]}
    for statement in ("UPDATE audit SET outcome = 'forged'", "DELETE FROM audit"):
        with pytest.raises(Exception, match="append-only"):
            with store.db.transaction() as db:
                db.execute(statement)
    assert len(store.audit()) == 3


def test_an_older_sqlite_state_dir_is_adopted(tmp_path: Path) -> None:
    """A state dir from before numbered migrations: its tables are kept and the new ones added."""
    path = tmp_path / "fnserve.db"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant TEXT NOT NULL,
        scopes TEXT NOT NULL, secret_hash TEXT NOT NULL, previous_hash TEXT, previous_until REAL,
        created_at REAL NOT NULL, expires_at REAL, revoked_at REAL);
        INSERT INTO api_keys VALUES ('aaaaaaaaaaaa', 'old', 'default', '["admin"]', 'h', NULL, NULL, 1.0, NULL, NULL);""")
    db.close()
    store = StateStore(path)
    assert [k.name for k in store.keys()] == ["old"] and store.keys()[0].limits == {}
    store.close()


def test_an_unreachable_postgres_is_a_clear_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    url = f"postgresql://fnserve:secret@127.0.0.1:{free_port()}/fnserve"
    with pytest.raises(StoreUnavailable) as caught:
        StateStore(url)
    assert "cannot be reached" in str(caught.value) and "secret" not in str(caught.value)


def test_values_come_back_as_json_types(store: StateStore) -> None:
    store.add_key(KeyRecord("b" * 12, "k", "default", ("admin",), "h", created_at=1.5, limits={"rps": 2.5}))
    (key,) = store.keys()
    json.dumps(key.to_dict(), allow_nan=False)
    assert isinstance(key.created_at, float) and key.limits == {"rps": 2.5}


def test_a_revision_number_is_taken_once(store: StateStore) -> None:
    """Two routers deploying one function at the same moment: the second gets the next number."""
    assert store.reserve_revision(revision("sentiment", number=1))
    assert not store.reserve_revision(revision("sentiment", number=1))
    assert store.next_number("sentiment") == 2
    store.forget_revision("sentiment", 1)  # its deploy failed: the number is free again
    assert store.next_number("sentiment") == 1 and store.revisions("sentiment") == []
    store.publish(revision("sentiment", number=1))
    store.forget_revision("sentiment", 1)  # a revision that serves is never forgotten
    assert [r.number for r in store.revisions("sentiment")] == [1]


def test_a_value_postgresql_cannot_hold_is_the_callers_mistake(location: str | Path, store: StateStore) -> None:
    if isinstance(location, Path):  # SQLite keeps a NUL in text as it is
        store.set_tenant_limits("a\x00b", {})
        assert "a\x00b" in store.tenant_limits()
        return
    with pytest.raises(StoreRefused, match="cannot store"):
        store.set_tenant_limits("a\x00b", {})
    store.set_tenant_limits("acme", {"rps": 1})  # the connection is fine afterwards
    assert store.tenant_limits() == {"acme": {"rps": 1}}


def test_database_urls_are_shown_without_passwords_and_unknown_kinds_refused(tmp_path: Path) -> None:
    assert _redacted("postgresql://fnserve:s3cr@t@db:5432/x?sslmode=require&password=p2") == \
        "postgresql://fnserve:***@db:5432/x?sslmode=require&password=***"
    assert _redacted("postgresql://:onlypw@db/x") == "postgresql://:***@db/x"
    with pytest.raises(UnsupportedDatabase, match="mysql:// is not a database"):
        StateStore("mysql://u:pw@db/x")
    assert not any(tmp_path.iterdir())
