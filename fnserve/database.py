"""One SQL database behind the state store: SQLite in the state dir (the embedded default) or PostgreSQL
shared by every router (``FNSERVE_DATABASE_URL=postgresql://…``).

The store writes one dialect of SQL — ``?`` placeholders, ``INSERT … ON CONFLICT``, ``DOUBLE PRECISION``
— which both engines accept; this module translates the placeholders for psycopg, opens connections,
runs transactions and brings the schema up to date. Where the two differ (an identity column, a row
lock, an append-only trigger, GREATEST or MAX) the migration or the call names both spellings.

Migrations are a small ordered list in fnserve/migrations.py, applied in one transaction each and
recorded in ``schema_migrations``: no Alembic, because the store has no ORM for it to diff against, its
schema is a dozen tables, and a newcomer reads the whole history in one file. Routers that start at
once against one PostgreSQL take an advisory lock, so exactly one of them migrates.

A database that cannot be reached raises StoreUnavailable — the router answers 503 with a JSON error —
instead of whatever the driver raised.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

Params = Sequence[Any]


class StoreUnavailable(Exception):
    """The state database cannot be reached (PostgreSQL down, or refusing connections)."""

    status = 503


class StoreRefused(ValueError):
    """A value the database cannot hold (PostgreSQL refuses a NUL character in text): the caller's mistake."""

    status = 400


class UnsupportedDatabase(ValueError):
    """FNSERVE_DATABASE_URL names a kind of database fnserve does not speak."""


class Cursor(Protocol):
    """What a transaction hands its body: execute statements, read rows."""

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> Cursor: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class Database(Protocol):
    dialect: str
    """"sqlite" or "postgresql"."""
    shared: bool
    """True when other routers may write the same database (so this one must watch for their changes)."""

    def transaction(self) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor whose statements commit together, or not at all if the body raises."""

    def query(self, sql: str, params: Params = ()) -> list[Any]:
        """The rows of one read."""

    def close(self) -> None: ...


class SQLiteDatabase:
    """One connection shared by the router's threads (a lock serialises them); writes take the file's
    lock at BEGIN, so routers sharing a state dir never deadlock upgrading a read lock."""

    dialect = "sqlite"
    shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


_PLACEHOLDER = re.compile(r"\?")


def _pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the store's SQL has no literal ``%`` or ``?`` in strings)."""
    return _PLACEHOLDER.sub("%s", sql)


class _PgCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Params = ()) -> _PgCursor:
        self._cursor.execute(_pg(sql), tuple(params) or None)  # None: no placeholders parsed at all
        return self

    def executemany(self, sql: str, rows: Sequence[Params]) -> _PgCursor:
        self._cursor.executemany(_pg(sql), [tuple(r) for r in rows])
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


class PostgresDatabase:
    """psycopg connections, opened on demand and kept idle for reuse (a reused one is checked first).

    Not psycopg_pool: its background reconnection backs off exponentially, so after a long outage the
    router would wait tens of seconds to notice the server is back, and every call during the outage
    waited the pool's timeout. Here a call during an outage fails at once (connection refused) and the
    first call after it connects again."""

    dialect = "postgresql"
    shared = True

    def __init__(self, url: str, *, connect_timeout: float = 3.0, max_idle: int = 8) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url, self._shown = url, _redacted(url)
        self._connect_timeout = max(1, round(connect_timeout))
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._errors: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
        self._refused: type[Exception] = psycopg.DataError

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(f"the state database ({self._shown}) cannot be reached: {first}")

    def _connection(self) -> Any:
        """An idle connection that still answers, or a new one."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._psycopg.connect(self._url, connect_timeout=self._connect_timeout)
            try:
                connection.execute("SELECT 1")
                connection.rollback()
                return connection
            except self._errors:  # the server restarted since: drop it, try the next
                connection.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        try:
            connection = self._connection()
        except self._errors as exc:
            raise self._unavailable(exc) from None
        healthy = False
        try:
            with connection.transaction(), connection.cursor() as cursor:
                yield _PgCursor(cursor)
            healthy = True
        except self._errors as exc:
            raise self._unavailable(exc) from None
        except self._refused as exc:
            healthy = True  # the transaction was rolled back; the connection is fine
            raise StoreRefused(f"a value the state database cannot store: {str(exc).strip().splitlines()[0]}") \
                from None
        finally:
            with self._lock:
                keep = healthy and not connection.broken and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(connection)
            if not keep:
                connection.close()

    def query(self, sql: str, params: Params = ()) -> list[Any]:
        with self.transaction() as cursor:
            return cursor.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _redacted(url: str) -> str:
    """A database URL without its password (in the authority or as a parameter), for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if parts.password is not None else (f"{user}@{host}" if user else host)
    query = "&".join(f"{k}=***" if k.lower() == "password" else f"{k}={v}"
                     for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def open_database(location: Path | str) -> Database:
    """SQLite at a path, or PostgreSQL at a ``postgresql://`` (or ``postgres://``) URL; any other URL is
    refused rather than taken for a file name."""
    if isinstance(location, str) and "://" in location:
        scheme = location.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise UnsupportedDatabase(f"FNSERVE_DATABASE_URL: {scheme}:// is not a database fnserve can use "
                                      f"(expected postgresql://user:password@host:port/database)")
        return PostgresDatabase(location)
    return SQLiteDatabase(Path(location))


Migration = Callable[[Cursor, str], None]
"""One step of the schema: runs its statements on the cursor, for the dialect it is given."""


def migrate(db: Database, migrations: Sequence[tuple[int, str, Migration]]) -> list[int]:
    """Apply the migrations not yet recorded, in order, each in its own transaction; returns those applied."""
    create = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
              "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
    with db.transaction() as cursor:
        if db.dialect == "postgresql":  # one router migrates; the others wait, then find nothing to do
            cursor.execute("SELECT pg_advisory_xact_lock(7311)")
        cursor.execute(create)
    applied: list[int] = []
    for version, name, step in migrations:
        with db.transaction() as cursor:
            if db.dialect == "postgresql":
                cursor.execute("SELECT pg_advisory_xact_lock(7311)")
            if cursor.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                continue
            step(cursor, db.dialect)
            cursor.execute("INSERT INTO schema_migrations VALUES (?, ?, CAST(? AS DOUBLE PRECISION))",
                           (version, name, time.time()))
            applied.append(version)
    return applied
