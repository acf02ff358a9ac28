"""The state store never writes what it cannot read back, and repairs rows older versions wrote."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from pathlib import Path

import pytest

from fnserve.records import KeyRecord
from fnserve.router.body import parse_json
from fnserve.settings import Settings
from fnserve.state import StateStore


def test_non_finite_values_are_refused_before_they_reach_the_database(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "fnserve.db")
    with pytest.raises(ValueError):
        store.add_key(KeyRecord("a" * 12, "k", "default", ("invoke:*",), "h", limits={"rps": math.inf}))
    with pytest.raises(ValueError):
        store.add_key(KeyRecord("b" * 12, "k", "default", ("invoke:*",), "h", expires_at=math.inf))
    with pytest.raises(ValueError):
        store.set_tenant_limits("acme", {"rps": math.nan})
    assert store.keys() == [] and store.tenant_limits() == {}


def test_rows_stored_with_non_finite_values_are_repaired_at_startup(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fnserve.db"
    StateStore(path).close()
    db = sqlite3.connect(path)  # what an earlier version let through: Infinity and NaN as JSON, inf as REAL
    db.execute("INSERT INTO api_keys VALUES ('ccccccccccccc', 'k', 'default', '[\"invoke:*\"]', 'h', 'old', ?, 1.0, ?,"
               " NULL, ?)", (math.inf, math.inf, json.dumps({"rps": math.inf, "burst": 5, "daily": math.nan})))
    db.execute("INSERT INTO tenant_limits VALUES ('acme', ?)", (json.dumps({"rps": math.inf, "concurrency": 3}),))
    db.commit()
    db.close()

    with caplog.at_level(logging.WARNING, logger="fnserve.state"):
        store = StateStore(path)
    (record,) = store.keys()
    assert record.limits == {"burst": 5}
    assert record.expires_at is None  # an infinite lifetime is no expiry
    assert record.previous_until is not None and math.isfinite(record.previous_until)  # the old secret lapses
    assert store.tenant_limits() == {"acme": {"concurrency": 3}}
    json.dumps([k.to_dict() for k in store.keys()], allow_nan=False)  # every row reads back as strict JSON
    repaired = caplog.text
    assert "dropped non-finite limits rps, daily" in repaired and "tenant 'acme'" in repaired
    assert "expires_at was inf" in repaired
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fnserve.state"):
        StateStore(path)
    assert "repaired" not in caplog.text  # nothing left to repair


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e309}',
                                 b"[" * 40 + b"]" * 40, b"[" * 100_000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff"])
def test_strict_json_refuses_what_the_store_could_not_hold(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(raw)


def test_strict_json_reads_ordinary_bodies() -> None:
    assert parse_json(b'{"rps": 2.5, "names": ["a", {"b": [1, 2]}]}') == {"rps": 2.5, "names": ["a", {"b": [1, 2]}]}


def test_default_body_limit_is_64_mib() -> None:
    assert Settings.from_env({}).max_body_bytes == 64 * 2**20
    assert Settings.from_env({"FNSERVE_MAX_BODY_BYTES": "1024"}).max_body_bytes == 1024
