"""API keys and tenants: who may call, and the default limits of the tenant a key belongs to.

A key reads ``fns_<id>_<secret>``: a 12-hex-digit id to look it up by and a 160-bit secret of which
only an HMAC-SHA256 (keyed with a per-installation pepper kept in the state dir, mode 0600) is stored,
compared with hmac.compare_digest. Key records and verified tokens are cached for a few seconds so the
request path does not touch the database on every call; every change made here drops what it made
stale at once, and another router's changes mark every verification stale within one polling interval
(services/sync.py). While the database cannot be reached, a token verified before keeps working.
Errors name the key id, never the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fnserve.backends.base import BackendError
from fnserve.database import StoreUnavailable
from fnserve.records import KeyRecord
from fnserve.router.invocation import Principal
from fnserve.router.quota import Limits
from fnserve.router.services.audit import SYSTEM, Actor, AuditLog
from fnserve.settings import Settings
from fnserve.state import StateStore

_TOKEN_RE = re.compile(r"^fns_([0-9a-f]{12})_([0-9a-f]{40})$")
_SCOPE_RE = re.compile(r"^(admin|metrics|invoke:\*|invoke:[a-z]([-a-z0-9]*[a-z0-9])?)$")
CACHE_SECONDS = 5.0
TENANT_CACHE_SECONDS = 5.0
MIN_PEPPER_BYTES = 16
ADMIN_SCOPES = ("admin", "invoke:*")
log = logging.getLogger("fnserve.keys")


def valid_scope(scope: str) -> bool:
    return bool(_SCOPE_RE.match(scope))


def _private_file(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, created that way (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_pepper(state_dir: Path) -> bytes:
    """The installation's HMAC key for secrets, created on first use."""
    path = state_dir / "pepper"
    if not path.exists():
        _private_file(path, secrets.token_bytes(32))
    return path.read_bytes()


class SecretFileError(Exception):
    """A pepper or admin-key file the router cannot start with; the message names the file and what is
    wrong with it, never its contents."""


def _read_secret_file(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SecretFileError(f"{setting}={path}: no such file") from None
    except IsADirectoryError:
        raise SecretFileError(f"{setting}={path}: is a folder, not a file") from None
    except OSError as exc:
        raise SecretFileError(f"{setting}={path}: cannot read it ({exc.strerror})") from None


def resolve_pepper(settings: Settings) -> bytes:
    """The pepper every key hash of this router is made with: FNSERVE_PEPPER_FILE when set (routers sharing
    keys must share the pepper, so it is given, never made), else the state dir's own. The one resolution
    both the startup's admin key and the app's KeyService use."""
    if not settings.pepper_file:
        return load_pepper(settings.state_dir)
    pepper = _read_secret_file("FNSERVE_PEPPER_FILE", settings.pepper_file)
    if len(pepper) < MIN_PEPPER_BYTES:
        raise SecretFileError(f"FNSERVE_PEPPER_FILE={settings.pepper_file}: holds {len(pepper)} bytes, a pepper "
                              f"needs at least {MIN_PEPPER_BYTES} (make one with: head -c 32 /dev/urandom > FILE)")
    return pepper


def read_admin_key_file(settings: Settings) -> tuple[str, str] | None:
    """The (key id, secret) of FNSERVE_ADMIN_KEY_FILE; None when it is not set."""
    if not settings.admin_key_file:
        return None
    raw = _read_secret_file("FNSERVE_ADMIN_KEY_FILE", settings.admin_key_file)
    match = _TOKEN_RE.match(raw.decode("ascii", errors="replace").strip())
    if not match:
        raise SecretFileError(f"FNSERVE_ADMIN_KEY_FILE={settings.admin_key_file}: not an API key: expected "
                              "fns_<12 hex digits>_<40 hex digits>")
    return match[1], match[2]


def hash_secret(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def new_secret() -> str:
    return secrets.token_hex(20)


def token_for(key_id: str, secret: str) -> str:
    return f"fns_{key_id}_{secret}"


def create_key(state: StateStore, pepper: bytes, name: str, tenant: str, scopes: list[str],
               expires_at: float | None = None, limits: dict[str, Any] | None = None) -> tuple[KeyRecord, str]:
    """Store a new key; returns the record and the token, which is never stored or shown again."""
    key_id, secret = secrets.token_hex(6), new_secret()
    record = KeyRecord(key_id, name, tenant, tuple(scopes), hash_secret(pepper, secret),
                       created_at=time.time(), expires_at=expires_at, limits=limits or {})
    state.add_key(record)
    return record, token_for(key_id, secret)


def bootstrap_admin_key(state: StateStore, pepper: bytes, state_dir: Path) -> str | None:
    """On the first start (no keys yet): an admin key, written to <state>/admin.key (0600); returns it."""
    if state.keys():
        return None
    _, token = create_key(state, pepper, "admin", "default", list(ADMIN_SCOPES))
    _private_file(state_dir / "admin.key", (token + "\n").encode())
    return token


def install_admin_key(state: StateStore, pepper: bytes, key_id: str, secret: str) -> None:
    """Make the admin key of a mounted Secret valid: created when absent, its hash replaced when the Secret
    was rotated (the old secret stops at once, as the Secret's owner asked). Several routers may start
    together on one state: an insert another router won is read back, not an error. A key revoked through
    the API stays revoked (a restart must not undo a revocation): mount a new key id instead."""
    digest = hash_secret(pepper, secret)
    record = state.key(key_id)
    if record is None:
        try:
            state.add_key(KeyRecord(key_id, "admin", "default", ADMIN_SCOPES, digest, created_at=time.time()))
            return
        except Exception:  # the store's unique-id conflict (sqlite3 or a server's driver): re-read below
            record = state.key(key_id)
            if record is None:
                raise
    if not hmac.compare_digest(record.secret_hash, digest):
        state.set_key_secret(key_id, digest)
        log.info("admin API key %s: secret replaced by the one in FNSERVE_ADMIN_KEY_FILE", key_id)
    if record.revoked_at is not None:
        log.warning("admin API key %s from FNSERVE_ADMIN_KEY_FILE was revoked at %s; it stays revoked",
                    key_id, _when(record.revoked_at))


class AuthError(Exception):
    """A key that does not let its bearer in: 401 (no, bad or dead key) or 403 (lacks the scope)."""

    def __init__(self, status: int, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key_id = key_id


class KeyNotFound(BackendError):
    status = 404


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyService:
    """Verifies tokens on the request path and changes keys and tenants for the admin API."""

    def __init__(self, state: StateStore, pepper: bytes, audit: AuditLog | None = None) -> None:
        self.state = state
        self.pepper = pepper
        self.audit = audit or AuditLog(state)
        self._records: dict[str, tuple[float, KeyRecord | None]] = {}
        # token → (cached at, principal, valid until): skips the HMAC for a token seen in the last seconds
        self._verified: dict[str, tuple[float, Principal, float]] = {}
        self._fresh_after = -math.inf
        """Verifications older than this (monotonic) are checked again before use (another router changed a key)."""
        self._tenants: tuple[float, dict[str, Limits]] = (-math.inf, {})
        self.tenant_generation = 0
        """Bumped whenever the tenants' limits are re-read, so limits resolved from older ones are redone."""

    # -- the request path ---------------------------------------------------------------------------
    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises AuthError (401) saying what is wrong with it."""
        seen = self._verified.get(token)
        if seen is not None and seen[0] > self._fresh_after and time.monotonic() - seen[0] < CACHE_SECONDS \
                and time.time() < seen[2]:
            return seen[1]
        try:
            principal, valid_until = await self._verify(token)
        except StoreUnavailable:
            if seen is not None and time.time() < seen[2]:
                return seen[1]  # the database is down: a key verified before keeps working (docs/routers.md)
            raise
        except AuthError:
            self._verified.pop(token, None)  # never a fallback for a key found revoked, expired or wrong
            raise
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[token] = (time.monotonic(), principal, valid_until)
        return principal

    async def _record(self, key_id: str) -> KeyRecord | None:
        cached = self._records.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        record = await asyncio.to_thread(self.state.key, key_id)
        if len(self._records) > 10_000:  # unknown ids must not grow the cache without bound
            self._records.clear()
        self._records[key_id] = (time.monotonic(), record)
        return record

    async def _verify(self, token: str) -> tuple[Principal, float]:
        match = _TOKEN_RE.match(token)
        if not match:
            raise AuthError(401, "malformed API key: expected fns_<key-id>_<secret>")
        key_id, secret = match.groups()
        record = await self._record(key_id)
        if record is None:
            raise AuthError(401, f"unknown API key {key_id}", key_id)
        now = time.time()
        digest = hash_secret(self.pepper, secret)
        current = hmac.compare_digest(digest, record.secret_hash)
        previous = (record.previous_hash is not None and record.previous_until is not None
                    and now < record.previous_until and hmac.compare_digest(digest, record.previous_hash))
        if not (current or previous):
            raise AuthError(401, f"invalid secret for API key {key_id}", key_id)
        if record.revoked_at is not None:
            raise AuthError(401, f"API key {key_id} was revoked at {_when(record.revoked_at)}", key_id)
        if record.expires_at is not None and now >= record.expires_at:
            raise AuthError(401, f"API key {key_id} expired at {_when(record.expires_at)}", key_id)
        valid_until = min(record.expires_at or math.inf,
                          math.inf if current else record.previous_until or math.inf)
        return Principal(record.id, record.name, record.tenant, record.scopes, record.limits), valid_until

    async def tenant_limits(self) -> dict[str, Limits]:
        """Tenants' default limits, re-read at most every few seconds (other routers may change them)."""
        fetched, limits = self._tenants
        if time.monotonic() - fetched > TENANT_CACHE_SECONDS:
            try:
                stored = await asyncio.to_thread(self.state.tenant_limits)
            except StoreUnavailable:
                return limits  # the database is down: the limits read last keep applying

            limits = {tenant: Limits(**values) for tenant, values in stored.items()}
            self._tenants = (time.monotonic(), limits)
            self.tenant_generation += 1
        return limits

    def _forget(self, key_id: str) -> None:
        self._records.pop(key_id, None)
        for token in [t for t, (_, principal, _) in self._verified.items() if principal.key_id == key_id]:
            del self._verified[token]

    def forget_all(self) -> None:
        """Another router changed a key: verify every token afresh at its next use. The verifications are
        kept, as the fallback while the database is down; one that fails afresh is dropped."""
        self._records.clear()
        self._fresh_after = time.monotonic()

    def forget_tenants(self) -> None:
        """Another router changed a tenant's limits: re-read them at the next request (the old ones stay
        as the fallback while the database is down)."""
        self._tenants = (-math.inf, self._tenants[1])

    # -- the admin API ------------------------------------------------------------------------------
    async def keys(self) -> list[KeyRecord]:
        return await asyncio.to_thread(self.state.keys)

    async def record(self, key_id: str) -> KeyRecord:
        """One key's record (revoked and expired ones too); raises KeyNotFound."""
        record = await asyncio.to_thread(self.state.key, key_id)
        if record is None:
            raise KeyNotFound(f"no API key {key_id!r}")
        return record

    async def create(self, name: str, tenant: str, scopes: list[str], expires_in: float | None,
                     limits: dict[str, Any], actor: Actor = SYSTEM) -> tuple[KeyRecord, str]:
        """A new key and its token (shown once: only its hash is stored)."""
        expires_at = time.time() + expires_in if expires_in else None
        async with self.audit.action(actor, "key.create", name, tenant=tenant, scopes=scopes, limits=limits,
                                     expiresAt=expires_at) as detail:
            record, token = await asyncio.to_thread(create_key, self.state, self.pepper, name, tenant, scopes,
                                                    expires_at, limits)
            detail["keyId"] = record.id
        return record, token

    async def revoke(self, key_id: str, actor: Actor = SYSTEM) -> None:
        async with self.audit.action(actor, "key.revoke", key_id):
            if not await asyncio.to_thread(self.state.revoke_key, key_id, time.time()):
                raise KeyNotFound(f"no active API key {key_id!r}")
        self._forget(key_id)

    async def rotate(self, key_id: str, grace: float, actor: Actor = SYSTEM) -> str:
        """A new secret for a key (its token returned); the old one keeps working for ``grace`` seconds."""
        secret = new_secret()
        async with self.audit.action(actor, "key.rotate", key_id, grace=grace):
            changed = await asyncio.to_thread(self.state.rotate_key, key_id, hash_secret(self.pepper, secret),
                                              time.time() + grace)
            if not changed:
                raise KeyNotFound(f"no active API key {key_id!r}")
        self._forget(key_id)
        return token_for(key_id, secret)

    async def tenants(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(self.state.tenant_limits)

    async def set_tenant(self, tenant: str, limits: dict[str, Any], actor: Actor = SYSTEM) -> None:
        """Replace a tenant's default limits; this router applies them from its next request."""
        async with self.audit.action(actor, "tenant.set", tenant, limits=limits):
            await asyncio.to_thread(self.state.set_tenant_limits, tenant, limits)
        self.forget_tenants()
