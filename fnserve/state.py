"""Persistence of deployed functions and their revisions (SQLite in the state dir).

A revision is immutable: the manifest as deployed, the folder its code came from and the model folder
it resolved to. A function points at its current revision; restarting ``fnserve up`` re-applies the
current revision of every function, so deployments survive a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnserve.manifest import Function, parse_function

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
"""


@dataclass(frozen=True)
class Revision:
    """One deployed version of a function: what runs, from where."""

    function: Function
    number: int
    source_dir: Path
    model_dir: Path
    created_at: float

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def id(self) -> str:
        return f"{self.name}-{self.number:05d}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.number, "id": self.id, "sourceDir": str(self.source_dir),
                "modelDir": str(self.model_dir), "createdAt": self.created_at,
                "manifest": self.function.to_dict()}


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: attributes and the hash of its secret, never the secret."""

    id: str
    name: str
    tenant: str
    scopes: tuple[str, ...]
    secret_hash: str
    previous_hash: str | None = None
    previous_until: float | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.name, self.tenant, json.dumps(list(self.scopes)), self.secret_hash,
                self.previous_hash, self.previous_until, self.created_at, self.expires_at, self.revoked_at)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> KeyRecord:
        values = list(row)
        values[3] = tuple(json.loads(values[3]))
        return cls(*values)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tenant": self.tenant, "scopes": list(self.scopes),
                "createdAt": self.created_at, "expiresAt": self.expires_at, "revokedAt": self.revoked_at,
                "previousSecretValidUntil": self.previous_until}


class StateStore:
    """Thread-safe access to the state database; callers on the event loop use a worker thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

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
                (revision.name, revision.number, json.dumps(revision.function.to_dict()),
                 str(revision.source_dir), str(revision.model_dir), revision.created_at))
            self._db.execute("INSERT OR REPLACE INTO functions VALUES (?, ?, ?)",
                             (revision.name, revision.number, now))

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

    # -- API keys (only hashes of secrets are ever stored) -----------------------------------------
    def add_key(self, key: KeyRecord) -> None:
        with self._lock:
            self._db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", key.row())

    def key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return KeyRecord.from_row(row) if row else None

    def keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        return [KeyRecord.from_row(row) for row in rows]

    def revoke_key(self, key_id: str, when: float) -> bool:
        with self._lock:
            return self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                    (when, key_id)).rowcount > 0

    def rotate_key(self, key_id: str, secret_hash: str, previous_until: float) -> bool:
        """A new secret; the current one stays valid until ``previous_until``."""
        with self._lock:
            return self._db.execute(
                "UPDATE api_keys SET previous_hash = secret_hash, previous_until = ?, secret_hash = ? "
                "WHERE id = ? AND revoked_at IS NULL", (previous_until, secret_hash, key_id)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _revision(row: tuple[Any, ...]) -> Revision:
    function, number, manifest, source_dir, model_dir, created_at = row
    return Revision(parse_function(json.loads(manifest), f"state:{function}"), number, Path(source_dir),
                    Path(model_dir), created_at)
