"""Persistence of functions, revisions, keys, usage, training jobs and the audit log — in SQLite in the
state dir, or in PostgreSQL shared by several routers (fnserve/database.py; the schema's history is
fnserve/migrations.py).

A revision is immutable: the manifest as deployed (its model URI pinned to a concrete run), the folder
its code came from and the model folder it resolved to. A function points at its current revision —
the newest, or an older one after a rollback; restarting ``fnserve up`` re-applies the current revision
of every function, so deployments survive a restart. Job records outlive the jobs: state, times, exit
code, metrics and the artifact they published.

Nothing the database cannot give back is written: every JSON column is encoded with NaN and the
infinities refused, and every time column must be finite (validation comes first — manifests and admin
bodies refuse such numbers — and this is the store's own guarantee). Rows an older version stored with
such values are repaired when the store opens, and each repair is logged.

Every change another router must learn of — the function table, keys, tenants' limits — bumps that
topic's version in ``changes`` in the same transaction; routers poll the versions (services/sync.py).
A usage batch merged from Redis carries an id recorded with it, so it is merged exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from fnserve.accounting import Tally
from fnserve.database import Cursor, StoreUnavailable, migrate, open_database
from fnserve.finite import non_finite
from fnserve.manifest import parse_function
from fnserve.migrations import MIGRATIONS
from fnserve.records import AuditEntry, JobRecord, KeyRecord, Revision, Rollout

__all__ = ["StateStore", "StoreUnavailable", "dumps"]

log = logging.getLogger("fnserve.state")

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


_FUNCTION_ROWS = ("SELECT f.name, f.canary_percent, r.*, c.* FROM functions f "
                  "JOIN revisions r ON r.function = f.name AND r.number = f.revision "
                  "LEFT JOIN revisions c ON c.function = f.name AND c.number = f.canary")
_FUNCTION_UPSERT = ("INSERT INTO functions (name, revision, updated_at, canary, canary_percent) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET revision = excluded.revision, updated_at = excluded.updated_at, "
                    "canary = excluded.canary, canary_percent = excluded.canary_percent")
_REVISION_INSERT = "INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (function, number) "
_REVISION_UPDATE = ("DO UPDATE SET manifest = excluded.manifest, source_dir = excluded.source_dir, "
                    "model_dir = excluded.model_dir, created_at = excluded.created_at")
_JOB_COLUMNS = ("id", "name", "function", "state", "manifest", "source_dir", "params", "output", "created_at",
                "started_at", "finished_at", "exit_code", "message", "artifact_uri", "metrics", "deploy")
_JOB_UPSERT = (f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join('?' * len(_JOB_COLUMNS))}) "
               f"ON CONFLICT (id) DO UPDATE SET "
               + ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS[1:]))
_KEY_COLUMNS = ("id", "name", "tenant", "scopes", "secret_hash", "previous_hash", "previous_until", "created_at",
                "expires_at", "revoked_at", "limits")
_AUDIT_COLUMNS = ("at", "actor", "action", "target", "outcome", "status", "request_id", "client", "detail")


def _bump(cursor: Cursor, topic: str) -> None:
    """Tell the other routers that ``topic`` changed (in the transaction that changed it)."""
    cursor.execute("INSERT INTO changes VALUES (?, 1) ON CONFLICT (topic) DO UPDATE SET version = changes.version + 1",
                   (topic,))


class StateStore:
    """Thread-safe access to the state database; callers on the event loop use a worker thread.

    ``location`` is a path (SQLite) or a ``postgresql://`` URL. Any method may raise StoreUnavailable."""

    def __init__(self, location: Path | str) -> None:
        self.db = open_database(location)
        self._for_update = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        try:
            for version in migrate(self.db, MIGRATIONS):
                log.info("state: applied migration %d", version)
            for repair in self._repair_non_finite():
                log.warning("state: repaired %s", repair)
        except BaseException:
            self.db.close()
            raise

    @property
    def shared(self) -> bool:
        """Whether other routers may change this database (so this one watches ``versions()``)."""
        return self.db.shared

    def _repair_non_finite(self) -> list[str]:
        """Rewrite rows an older version stored with NaN or an infinity, which could never be read back
        as JSON: a limit of ±inf or NaN is dropped (no limit, as an infinite one means); an expiry of +inf
        becomes none (never); any other non-finite time — a grace period's end among them — becomes now
        (already past: a previous secret never stays valid by accident)."""
        repairs: list[str] = []
        now = time.time()
        with self.db.transaction() as db:
            for key_id, limits_text, *times in db.execute(
                    f"SELECT id, limits, {', '.join(_KEY_TIMES)} FROM api_keys").fetchall():
                kept, bad = _finite_limits(limits_text)
                if bad:
                    db.execute("UPDATE api_keys SET limits = ? WHERE id = ?", (dumps(kept), key_id))
                    repairs.append(f"API key {key_id}: dropped non-finite limits {', '.join(bad)}")
                for column, value in zip(_KEY_TIMES, times, strict=True):
                    if isinstance(value, float) and not math.isfinite(value):
                        fixed = None if value == math.inf and column == "expires_at" else now
                        db.execute(f"UPDATE api_keys SET {column} = ? WHERE id = ?", (fixed, key_id))
                        repairs.append(f"API key {key_id}: {column} was {value}, now {fixed or 'none'}")
            for tenant, limits_text in db.execute("SELECT tenant, limits FROM tenant_limits").fetchall():
                kept, bad = _finite_limits(limits_text)
                if bad:
                    db.execute("UPDATE tenant_limits SET limits = ? WHERE tenant = ?", (dumps(kept), tenant))
                    repairs.append(f"tenant {tenant!r}: dropped non-finite limits {', '.join(bad)}")
        return repairs

    def versions(self) -> dict[str, int]:
        """Each topic's change counter ("functions", "keys", "tenants")."""
        return {topic: int(version) for topic, version in self.db.query("SELECT topic, version FROM changes")}

    # -- functions and their revisions ---------------------------------------------------------------
    def next_number(self, name: str) -> int:
        row = self.db.query("SELECT MAX(number) FROM revisions WHERE function = ?", (name,))[0]
        return (row[0] or 0) + 1

    def _save_revision(self, db: Cursor, revision: Revision) -> None:
        db.execute(_REVISION_INSERT + _REVISION_UPDATE, _revision_row(revision))

    def reserve_revision(self, revision: Revision) -> bool:
        """Record a revision about to start, if its number is still free (False: another router took it)."""
        with self.db.transaction() as db:
            return db.execute(_REVISION_INSERT + "DO NOTHING", _revision_row(revision)).rowcount > 0

    def forget_revision(self, name: str, number: int) -> None:
        """Drop a reserved revision that never served (its deploy failed)."""
        with self.db.transaction() as db:
            db.execute("DELETE FROM revisions WHERE function = ? AND number = ? AND NOT EXISTS "
                       "(SELECT 1 FROM functions WHERE name = ? AND (revision = ? OR canary = ?))",
                       (name, number, name, number, number))

    def publish(self, revision: Revision) -> None:
        """Record a revision that is serving and make it the function's only one (a canary ends), atomically."""
        with self.db.transaction() as db:
            self._save_revision(db, revision)
            db.execute(_FUNCTION_UPSERT, (revision.name, revision.number, time.time(), None, 0))
            _bump(db, "functions")

    def publish_canary(self, revision: Revision, percent: int) -> None:
        """Record a revision that serves beside the current one and takes ``percent`` of the traffic."""
        with self.db.transaction() as db:
            self._save_revision(db, revision)
            db.execute("UPDATE functions SET canary = ?, canary_percent = ?, updated_at = ? WHERE name = ?",
                       (revision.number, percent, time.time(), revision.name))
            _bump(db, "functions")

    def end_canary(self, name: str, promote: bool) -> None:
        """The canary becomes the current revision (``promote``), or is dropped."""
        with self.db.transaction() as db:
            if promote:
                db.execute("UPDATE functions SET revision = canary WHERE name = ? AND canary IS NOT NULL", (name,))
            db.execute("UPDATE functions SET canary = NULL, canary_percent = 0, updated_at = ? WHERE name = ?",
                       (time.time(), name))
            _bump(db, "functions")

    def activate(self, name: str, number: int) -> Revision | None:
        """Make an existing revision the only one serving again (a rollback)."""
        with self.db.transaction() as db:
            row = db.execute("SELECT * FROM revisions WHERE function = ? AND number = ?", (name, number)).fetchone()
            if row is None:
                return None
            db.execute(_FUNCTION_UPSERT, (name, number, time.time(), None, 0))
            _bump(db, "functions")
        return _revision(row)

    def revision(self, name: str, number: int) -> Revision | None:
        rows = self.db.query("SELECT * FROM revisions WHERE function = ? AND number = ?", (name, number))
        return _revision(rows[0]) if rows else None

    def revisions(self, name: str) -> list[Revision]:
        """Every revision of a function, oldest first."""
        return [_revision(row) for row in
                self.db.query("SELECT * FROM revisions WHERE function = ? ORDER BY number", (name,))]

    def rollout(self, name: str) -> Rollout | None:
        rows = self.db.query(_FUNCTION_ROWS + " WHERE f.name = ?", (name,))
        return _rollout(rows[0]) if rows else None

    def rollouts(self) -> list[Rollout]:
        """What every function serves, by name."""
        return [_rollout(row) for row in self.db.query(_FUNCTION_ROWS + " ORDER BY f.name")]

    def delete(self, name: str) -> bool:
        """Forget a function and its revisions; False if there was none."""
        with self.db.transaction() as db:
            gone = db.execute("DELETE FROM functions WHERE name = ?", (name,)).rowcount
            db.execute("DELETE FROM revisions WHERE function = ?", (name,))
            _bump(db, "functions")
        return gone > 0

    # -- training jobs ---------------------------------------------------------------------------
    def save_job(self, job: JobRecord) -> None:
        with self.db.transaction() as db:
            db.execute(_JOB_UPSERT, _job_row(job))

    def job(self, job_id: str) -> JobRecord | None:
        rows = self.db.query(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        """The newest jobs, newest first."""
        return [_job(row) for row in self.db.query(
            f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))]

    # -- API keys (only hashes of secrets are ever stored) -----------------------------------------
    def add_key(self, key: KeyRecord) -> None:
        with self.db.transaction() as db:
            db.execute(f"INSERT INTO api_keys ({', '.join(_KEY_COLUMNS)}) VALUES ({', '.join('?' * 11)})",
                       _key_row(key))
            _bump(db, "keys")

    def key(self, key_id: str) -> KeyRecord | None:
        rows = self.db.query(f"SELECT {', '.join(_KEY_COLUMNS)} FROM api_keys WHERE id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    def keys(self) -> list[KeyRecord]:
        return [_key(row) for row in
                self.db.query(f"SELECT {', '.join(_KEY_COLUMNS)} FROM api_keys ORDER BY created_at")]

    def revoke_key(self, key_id: str, when: float) -> bool:
        with self.db.transaction() as db:
            changed = db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                 (when, key_id)).rowcount > 0
            _bump(db, "keys")
        return changed

    def rotate_key(self, key_id: str, secret_hash: str, previous_until: float) -> bool:
        """A new secret; the current one stays valid until ``previous_until``."""
        _require_finite(previous_until=previous_until)
        with self.db.transaction() as db:
            changed = db.execute(
                "UPDATE api_keys SET previous_hash = secret_hash, previous_until = ?, secret_hash = ? "
                "WHERE id = ? AND revoked_at IS NULL", (previous_until, secret_hash, key_id)).rowcount > 0
            _bump(db, "keys")
        return changed

    def set_key_secret(self, key_id: str, secret_hash: str) -> bool:
        """Replace a key's secret with no grace period (the admin key's Secret was rotated); False if no key."""
        with self.db.transaction() as db:
            changed = db.execute(
                "UPDATE api_keys SET secret_hash = ?, previous_hash = NULL, previous_until = NULL WHERE id = ?",
                (secret_hash, key_id)).rowcount > 0
            _bump(db, "keys")
        return changed

    # -- limits and daily quotas -----------------------------------------------------------------
    def set_tenant_limits(self, tenant: str, limits: dict[str, Any]) -> None:
        with self.db.transaction() as db:
            db.execute("INSERT INTO tenant_limits VALUES (?, ?) ON CONFLICT (tenant) DO UPDATE SET limits = excluded.limits",
                       (tenant, dumps(limits)))
            _bump(db, "tenants")

    def tenant_limits(self) -> dict[str, dict[str, Any]]:
        rows = self.db.query("SELECT tenant, limits FROM tenant_limits ORDER BY tenant")
        return {tenant: json.loads(limits) for tenant, limits in rows}

    def daily_count(self, subject: str, day: str) -> int:
        rows = self.db.query("SELECT requests FROM daily_counts WHERE subject = ? AND day = ?", (subject, day))
        return int(rows[0][0]) if rows else 0

    def add_daily_counts(self, counts: dict[tuple[str, str], int]) -> None:
        with self.db.transaction() as db:
            db.executemany("INSERT INTO daily_counts VALUES (?, ?, ?) ON CONFLICT (subject, day) "
                           "DO UPDATE SET requests = daily_counts.requests + excluded.requests",
                           [(subject, day, n) for (subject, day), n in counts.items()])

    def set_daily_counts(self, counts: dict[tuple[str, str], int]) -> None:
        """Copy counts kept elsewhere (Redis, shared by routers), never moving one down: two routers' copies
        taken a moment apart may arrive out of order, and a count too high only errs on the safe side."""
        greatest = "MAX" if self.db.dialect == "sqlite" else "GREATEST"
        with self.db.transaction() as db:
            db.executemany("INSERT INTO daily_counts VALUES (?, ?, ?) ON CONFLICT (subject, day) "
                           f"DO UPDATE SET requests = {greatest}(daily_counts.requests, excluded.requests)",
                           [(subject, day, n) for (subject, day), n in counts.items()])

    def merge_usage(self, tallies: dict[tuple[str, str, str], Tally], batch: str | None = None) -> bool:
        """Add tallies into the stored ones, in one transaction. A ``batch`` id is recorded with them: a
        batch already merged is not merged again (returns False)."""
        with self.db.transaction() as db:
            if batch is not None and not db.execute(
                    "INSERT INTO usage_batches VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                    (batch, time.time())).rowcount:
                return False
            for (key_id, function, day), tally in sorted(tallies.items()):  # one lock order: no deadlocks
                db.execute("INSERT INTO usage VALUES (?, ?, ?, ?) ON CONFLICT (key_id, function, day) DO NOTHING",
                           (key_id, function, day, Tally().to_json()))
                row = db.execute("SELECT tally FROM usage WHERE key_id = ? AND function = ? AND day = ?"
                                 + self._for_update, (key_id, function, day)).fetchone()
                merged = Tally.from_json(row[0])
                merged.merge(tally)
                db.execute("UPDATE usage SET tally = ? WHERE key_id = ? AND function = ? AND day = ?",
                           (merged.to_json(), key_id, function, day))
        return True

    def forget_usage_batches(self, before: float) -> None:
        """Batch ids are needed only while a batch may still be merged (seconds); older ones go."""
        with self.db.transaction() as db:
            db.execute("DELETE FROM usage_batches WHERE merged_at < ?", (before,))

    def usage(self, key_id: str | None, function: str | None, since: str | None) -> list[tuple[str, str, str, str]]:
        query, params = "SELECT key_id, function, day, tally FROM usage WHERE 1 = 1", []
        for column, value in (("key_id", key_id), ("function", function)):
            if value:
                query += f" AND {column} = ?"
                params.append(value)
        if since:
            query += " AND day >= ?"
            params.append(since)
        return [tuple(row) for row in self.db.query(query + " ORDER BY day, key_id, function", params)]

    # -- the audit log (append-only: the database refuses updates and deletes) ----------------------
    def append_audit(self, entry: AuditEntry) -> None:
        _require_finite(at=entry.at)
        with self.db.transaction() as db:
            db.execute(f"INSERT INTO audit ({', '.join(_AUDIT_COLUMNS)}) VALUES ({', '.join('?' * 9)})",
                       (entry.at, entry.actor, entry.action, entry.target, entry.outcome, entry.status,
                        entry.request_id, entry.client, dumps(entry.detail)))

    def audit(self, since: float | None = None, actor: str | None = None, action: str | None = None,
              limit: int = 1000) -> list[AuditEntry]:
        """Entries oldest first; ``action`` matches a whole action or a prefix ending in a dot ("key.")."""
        query, params = f"SELECT id, {', '.join(_AUDIT_COLUMNS)} FROM audit WHERE 1 = 1", list[Any]()
        if since is not None:
            query += " AND at >= ?"
            params.append(since)
        if actor:
            query += " AND actor = ?"
            params.append(actor)
        if action:  # a family ("key.") is a prefix, compared as text (LIKE differs in case between engines)
            family = action.rstrip(".") + "."
            query += " AND (action = ? OR substr(action, 1, ?) = ?)"
            params.extend([action, len(family), family])
        rows = self.db.query(f"SELECT * FROM ({query} ORDER BY id DESC LIMIT ?) newest ORDER BY id", [*params, limit])
        return [AuditEntry(at, who, what, target, outcome, status, request_id, client, json.loads(detail), entry_id)
                for entry_id, at, who, what, target, outcome, status, request_id, client, detail in rows]

    def close(self) -> None:
        self.db.close()


def _revision_row(revision: Revision) -> tuple[Any, ...]:
    return (revision.name, revision.number, dumps(revision.function.to_dict()), str(revision.source_dir),
            str(revision.model_dir), revision.created_at)


def _rollout(row: tuple[Any, ...]) -> Rollout:
    name, percent, *rest = row
    current, canary = rest[:6], rest[6:]
    return Rollout(_revision(tuple(current)), _revision(tuple(canary)) if canary[0] is not None else None,
                   int(percent or 0))


def _revision(row: tuple[Any, ...]) -> Revision:
    function, number, manifest, source_dir, model_dir, created_at = row
    return Revision(parse_function(json.loads(manifest), f"state:{function}"), number, Path(source_dir),
                    Path(model_dir), created_at)
