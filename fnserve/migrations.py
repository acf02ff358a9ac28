"""The state database's schema, as an ordered list of migrations (fnserve/database.py applies them).

A migration is never edited once released: a change is a new entry at the end. Each is written once for
both engines; where their SQL differs the step asks which dialect it runs on. Version 1 is the schema
as it stood before migrations were numbered, written with IF NOT EXISTS so that a state dir an older
fnserve made is adopted as it is.
"""

from __future__ import annotations

from fnserve.database import Cursor, Migration

_V1_TABLES = [
    """CREATE TABLE IF NOT EXISTS revisions (
        function    TEXT NOT NULL,
        number      INTEGER NOT NULL,
        manifest    TEXT NOT NULL,
        source_dir  TEXT NOT NULL,
        model_dir   TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (function, number))""",
    """CREATE TABLE IF NOT EXISTS functions (
        name        TEXT PRIMARY KEY,
        revision    INTEGER NOT NULL,
        updated_at  DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id               TEXT PRIMARY KEY,
        name             TEXT NOT NULL,
        tenant           TEXT NOT NULL,
        scopes           TEXT NOT NULL,
        secret_hash      TEXT NOT NULL,
        previous_hash    TEXT,
        previous_until   DOUBLE PRECISION,
        created_at       DOUBLE PRECISION NOT NULL,
        expires_at       DOUBLE PRECISION,
        revoked_at       DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS tenant_limits (
        tenant       TEXT PRIMARY KEY,
        limits       TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS usage (
        key_id       TEXT NOT NULL,
        function     TEXT NOT NULL,
        day          TEXT NOT NULL,
        tally        TEXT NOT NULL,
        PRIMARY KEY (key_id, function, day))""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        function     TEXT NOT NULL,
        state        TEXT NOT NULL,
        manifest     TEXT NOT NULL,
        source_dir   TEXT NOT NULL,
        params       TEXT NOT NULL,
        output       TEXT NOT NULL,
        created_at   DOUBLE PRECISION NOT NULL,
        started_at   DOUBLE PRECISION,
        finished_at  DOUBLE PRECISION,
        exit_code    INTEGER,
        message      TEXT NOT NULL DEFAULT '',
        artifact_uri TEXT,
        metrics      TEXT NOT NULL DEFAULT '{}',
        deploy       TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS daily_counts (
        subject      TEXT NOT NULL,
        day          TEXT NOT NULL,
        requests     BIGINT NOT NULL,
        PRIMARY KEY (subject, day))""",
]


def _columns(cursor: Cursor, dialect: str, table: str) -> set[str]:
    if dialect == "sqlite":
        return {row[1] for row in cursor.execute(f"PRAGMA table_info({table})").fetchall()}
    rows = cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
    return {row[0] for row in rows.fetchall()}


def initial(cursor: Cursor, dialect: str) -> None:
    """The tables of fnserve before numbered migrations (and the key limits column it added later)."""
    for statement in _V1_TABLES:
        cursor.execute(statement)
    if "limits" not in _columns(cursor, dialect, "api_keys"):
        cursor.execute("ALTER TABLE api_keys ADD COLUMN limits TEXT")


def many_routers(cursor: Cursor, dialect: str) -> None:
    """What several routers on one database need: a canary beside a function's current revision, a
    version per kind of change (routers poll it to learn of each other's changes), the usage batches
    already merged (so a batch is merged exactly once), and the append-only audit log."""
    cursor.execute("ALTER TABLE functions ADD COLUMN canary INTEGER")
    cursor.execute("ALTER TABLE functions ADD COLUMN canary_percent INTEGER NOT NULL DEFAULT 0")
    cursor.execute("CREATE TABLE changes (topic TEXT PRIMARY KEY, version BIGINT NOT NULL)")
    cursor.execute("CREATE TABLE usage_batches (id TEXT PRIMARY KEY, merged_at DOUBLE PRECISION NOT NULL)")
    cursor.execute("CREATE INDEX usage_batches_merged_at ON usage_batches (merged_at)")
    identity = ("INTEGER PRIMARY KEY AUTOINCREMENT" if dialect == "sqlite"
                else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    cursor.execute(f"""CREATE TABLE audit (
        id          {identity},
        at          DOUBLE PRECISION NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        target      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        status      INTEGER NOT NULL,
        request_id  TEXT NOT NULL,
        client      TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '{{}}')""")
    cursor.execute("CREATE INDEX audit_at ON audit (at)")
    message = "the audit log is append-only"
    if dialect == "sqlite":
        for event in ("UPDATE", "DELETE"):
            cursor.execute(f"CREATE TRIGGER audit_no_{event.lower()} BEFORE {event} ON audit "
                           f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
    else:
        cursor.execute("CREATE FUNCTION fnserve_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                       f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$")
        cursor.execute("CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
                       "FOR EACH ROW EXECUTE FUNCTION fnserve_audit_append_only()")


MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial", initial),
    (2, "many routers", many_routers),
]
