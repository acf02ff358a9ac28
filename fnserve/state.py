"""Persistence of functions, revisions, keys, usage and training jobs (SQLite in the state dir).

A revision is immutable: the manifest as deployed (its model URI pinned to a concrete run), the folder
its code came from and the model folder it resolved to. A function points at its current revision —
the newest, or an older one after a rollback; restarting ``fnserve up`` re-applies the current revision
of every function, so deployments survive a restart. Job records outlive the jobs: state, times, exit
code, metrics and the artifact they published.

Nothing the database cannot give back is written: every JSON column is encoded with NaN and the
infinities refused, and every time column must be finite (validation comes first — manifests and admin
bodies refuse such numbers — and this is the store's own guarantee). Rows an older version stored with
such values are repaired when the store opens, and each repair is logged.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fnserve.accounting import Tally
from fnserve.finite import non_finite
from fnserve.manifest import parse_function
from fnserve.records import JobRecord, KeyRecord, Revision

log = logging.getLogger("fnserve.state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    function    TEXT NOT NULL,
    number      INTEGER NOT NULL,
    manifest    TEXT NOT NULL,
    source_dir  TEXT NOT NULL,
    model_dir   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (function, number)
);
CREATE TABLE IF NOT EXISTS functions (
    name        TEXT PRIMARY KEY,
    revision    INTEGER NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    tenant           TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    secret_hash      TEXT NOT NULL,
    previous_hash    TEXT,
    previous_until   REAL,
    created_at       REAL NOT NULL,
    expires_at       REAL,
    revoked_at       REAL
);
CREATE TABLE IF NOT EXISTS tenant_limits (
    tenant       TEXT PRIMARY KEY,
    limits       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    key_id       TEXT NOT NULL,
    function     TEXT NOT NULL,
    day          TEXT NOT NULL,
    tally        TEXT NOT NULL,
    PRIMARY KEY (key_id, function, day)
);
CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    function     TEXT NOT NULL,
    state        TEXT NOT NULL,
    manifest     TEXT NOT NULL,
    source_dir   TEXT NOT NULL,
    params       TEXT NOT NULL,
    output       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    exit_code    INTEGER,
    message      TEXT NOT NULL DEFAULT '',
    artifact_uri TEXT,
    metrics      TEXT NOT NULL DEFAULT '{}',
    deploy       TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS daily_counts (
    subject      TEXT NOT NULL,
    day          TEXT NOT NULL,
    requests     INTEGER NOT NULL,
    PRIMARY KEY (subject, day)
);
"""
_KEY_COLUMNS = {"limits": "TEXT"}  # added after the first release of the table
_KEY_TIMES = ("previous_until", "created_at", "expires_at", "revoked_at")


def dumps(value: Any) -> str:
    """A value as a JSON column; raises ValueError for NaN or an infinity anywhere in it."""
    return json.dumps(value, allow_nan=False)


def _finite_limits(stored: str | None) -> tuple[dict[str, Any], list[str]]:
    """A stored limits object without its non-finite values, and the names of those."""
    limits = json.loads(stored or "{}")
    bad = non_finite(limits)
    return {k: v for k, v in limits.items() if k not in bad}, bad


def _require_finite(**times: float | None) -> None:
    """Refuse a time column that SQLite would store as ±inf or NaN (``None`` is a time not set)."""
    for name, value in times.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite time (got {value})")


def _job_row(job: JobRecord) -> tuple[Any, ...]:
    _require_finite(created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)
    return (job.id, job.name, job.function, job.state, dumps(job.manifest), job.source_dir,
            dumps(job.params), job.output, job.created_at, job.started_at, job.finished_at,
            job.exit_code, job.message, job.artifact_uri, dumps(job.metrics), job.deploy)


def _job(row: tuple[Any, ...]) -> JobRecord:
    values = list(row)
    for index in (4, 6, 14):
        values[index] = json.loads(values[index])
    return JobRecord(*values)


def _key_row(key: KeyRecord) -> tuple[Any, ...]:
    _require_finite(previous_until=key.previous_until, created_at=key.created_at, expires_at=key.expires_at,
                    revoked_at=key.revoked_at)
    return (key.id, key.name, key.tenant, dumps(list(key.scopes)), key.secret_hash, key.previous_hash,
            key.previous_until, key.created_at, key.expires_at, key.revoked_at, dumps(key.limits))


def _key(row: tuple[Any, ...]) -> KeyRecord:
    values = list(row)
    values[3] = tuple(json.loads(values[3]))
    values[10] = json.loads(values[10] or "{}")
    return KeyRecord(*values)


class StateStore:
    """Thread-safe access to the state database; callers on the event loop use a worker thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")}
        for column, kind in _KEY_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")
        for repair in self._repair_non_finite():
            log.warning("state: repaired %s", repair)

    def _repair_non_finite(self) -> list[str]:
        """Rewrite rows an older version stored with NaN or an infinity, which could never be read back
        as JSON: a limit of ±inf or NaN is dropped (no limit, as an infinite one means); an expiry of +inf
        becomes none (never); any other non-finite time — a grace period's end among them — becomes now
        (already past: a previous secret never stays valid by accident)."""
        repairs: list[str] = []
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for key_id, limits_text, *times in self._db.execute(
                    f"SELECT id, limits, {', '.join(_KEY_TIMES)} FROM api_keys").fetchall():
                kept, bad = _finite_limits(limits_text)
                if bad:
                    self._db.execute("UPDATE api_keys SET limits = ? WHERE id = ?", (dumps(kept), key_id))
                    repairs.append(f"API key {key_id}: dropped non-finite limits {', '.join(bad)}")
                for column, value in zip(_KEY_TIMES, times, strict=True):
                    if isinstance(value, float) and not math.isfinite(value):
                        fixed = None if value == math.inf and column == "expires_at" else now
                        self._db.execute(f"UPDATE api_keys SET {column} = ? WHERE id = ?", (fixed, key_id))
                        repairs.append(f"API key {key_id}: {column} was {value}, now {fixed or 'none'}")
            for tenant, limits_text in self._db.execute("SELECT tenant, limits FROM tenant_limits").fetchall():
                kept, bad = _finite_limits(limits_text)
                if bad:
                    self._db.execute("UPDATE tenant_limits SET limits = ? WHERE tenant = ?", (dumps(kept), tenant))
                    repairs.append(f"tenant {tenant!r}: dropped non-finite limits {', '.join(bad)}")
        return repairs

    def next_number(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(number) FROM revisions WHERE function = ?", (name,)).fetchone()
        return (row[0] or 0) + 1

    def publish(self, revision: Revision) -> None:
        """Record a revision that is serving and make it the function's current one, atomically."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO revisions VALUES (?, ?, ?, ?, ?, ?)",
                (revision.name, revision.number, dumps(revision.function.to_dict()),
                 str(revision.source_dir), str(revision.model_dir), revision.created_at))
            self._db.execute("INSERT OR REPLACE INTO functions VALUES (?, ?, ?)",
                             (revision.name, revision.number, now))

    def activate(self, name: str, number: int) -> Revision | None:
        """Make an existing revision the current one again (a rollback)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT * FROM revisions WHERE function = ? AND number = ?",
                                   (name, number)).fetchone()
            if row is None:
                return None
            self._db.execute("INSERT OR REPLACE INTO functions VALUES (?, ?, ?)", (name, number, time.time()))
        return _revision(row)

    def revision(self, name: str, number: int) -> Revision | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM revisions WHERE function = ? AND number = ?",
                                   (name, number)).fetchone()
        return _revision(row) if row else None

    def revisions(self, name: str) -> list[Revision]:
        """Every revision of a function, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM revisions WHERE function = ? ORDER BY number", (name,)).fetchall()
        return [_revision(row) for row in rows]

    def current(self, name: str) -> Revision | None:
        with self._lock:
            row = self._db.execute(
                "SELECT r.* FROM functions f JOIN revisions r ON r.function = f.name AND r.number = f.revision "
                "WHERE f.name = ?", (name,)).fetchone()
        return _revision(row) if row else None

    def current_all(self) -> list[Revision]:
        with self._lock:
            rows = self._db.execute(
                "SELECT r.* FROM functions f JOIN revisions r ON r.function = f.name AND r.number = f.revision "
                "ORDER BY f.name").fetchall()
        return [_revision(row) for row in rows]

    def delete(self, name: str) -> bool:
        """Forget a function and its revisions; False if there was none."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            gone = self._db.execute("DELETE FROM functions WHERE name = ?", (name,)).rowcount
            self._db.execute("DELETE FROM revisions WHERE function = ?", (name,))
        return gone > 0

    # -- training jobs ---------------------------------------------------------------------------
    def save_job(self, job: JobRecord) -> None:
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs VALUES ({', '.join('?' * 16)})", _job_row(job))

    def job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        """The newest jobs, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [_job(row) for row in rows]

    # -- API keys (only hashes of secrets are ever stored) -----------------------------------------
    def add_key(self, key: KeyRecord) -> None:
        with self._lock:
            self._db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _key_row(key))

    def key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str, when: float) -> bool:
        with self._lock:
            return self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                    (when, key_id)).rowcount > 0

    def rotate_key(self, key_id: str, secret_hash: str, previous_until: float) -> bool:
        """A new secret; the current one stays valid until ``previous_until``."""
        _require_finite(previous_until=previous_until)
        with self._lock:
            return self._db.execute(
                "UPDATE api_keys SET previous_hash = secret_hash, previous_until = ?, secret_hash = ? "
                "WHERE id = ? AND revoked_at IS NULL", (previous_until, secret_hash, key_id)).rowcount > 0

    # -- limits and daily quotas -----------------------------------------------------------------
    def set_tenant_limits(self, tenant: str, limits: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tenant_limits VALUES (?, ?)", (tenant, dumps(limits)))

    def tenant_limits(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT tenant, limits FROM tenant_limits ORDER BY tenant").fetchall()
        return {tenant: json.loads(limits) for tenant, limits in rows}

    def daily_count(self, subject: str, day: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT requests FROM daily_counts WHERE subject = ? AND day = ?",
                                   (subject, day)).fetchone()
        return row[0] if row else 0

    def add_daily_counts(self, counts: dict[tuple[str, str], int]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO daily_counts VALUES (?, ?, ?) ON CONFLICT(subject, day) "
                "DO UPDATE SET requests = requests + excluded.requests",
                [(subject, day, n) for (subject, day), n in counts.items()])

    def merge_usage(self, tallies: dict[tuple[str, str, str], Tally]) -> None:
        """Add tallies into the stored ones, in one transaction."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for (key_id, function, day), tally in tallies.items():
                row = self._db.execute("SELECT tally FROM usage WHERE key_id = ? AND function = ? AND day = ?",
                                       (key_id, function, day)).fetchone()
                merged = Tally.from_json(row[0]) if row else Tally()
                merged.merge(tally)
                self._db.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?)",
                                 (key_id, function, day, merged.to_json()))

    def usage(self, key_id: str | None, function: str | None, since: str | None) -> list[tuple[str, str, str, str]]:
        query, params = "SELECT key_id, function, day, tally FROM usage WHERE 1 = 1", []
        for column, value in (("key_id", key_id), ("function", function)):
            if value:
                query += f" AND {column} = ?"
                params.append(value)
        if since:
            query += " AND day >= ?"
            params.append(since)
        with self._lock:
            return self._db.execute(query + " ORDER BY day, key_id, function", params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _revision(row: tuple[Any, ...]) -> Revision:
    function, number, manifest, source_dir, model_dir, created_at = row
    return Revision(parse_function(json.loads(manifest), f"state:{function}"), number, Path(source_dir),
                    Path(model_dir), created_at)
