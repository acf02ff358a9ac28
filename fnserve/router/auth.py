"""API keys: format, hashing, scopes, and the pure ASGI middleware that enforces them.

A key reads ``fns_<id>_<secret>``: a 12-hex-digit id to look it up by and a 160-bit secret of which
only an HMAC-SHA256 (keyed with a per-installation pepper kept in the state dir, mode 0600) is stored,
compared with hmac.compare_digest. Key records are cached for a few seconds so the request path does
not touch SQLite on every call. Errors name the key id, never the secret.

Order of checks: no key → 401 with WWW-Authenticate; bad, unknown, revoked or expired key → 401;
valid key without the scope for this function or for the admin API → 403. Health, readiness and the
OpenAPI document stay open; a function with ``spec.auth.public: true`` needs no key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from fnserve.records import KeyRecord
from fnserve.router.errors import error_response
from fnserve.state import StateStore

_TOKEN_RE = re.compile(r"^fns_([0-9a-f]{12})_([0-9a-f]{40})$")
_SCOPE_RE = re.compile(r"^(admin|invoke:\*|invoke:[a-z]([-a-z0-9]*[a-z0-9])?)$")
_MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)")
CACHE_SECONDS = 5.0


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
    _, token = create_key(state, pepper, "admin", "default", ["admin", "invoke:*"])
    _private_file(state_dir / "admin.key", (token + "\n").encode())
    return token


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    tenant: str
    scopes: tuple[str, ...]
    limits: dict[str, Any] = field(default_factory=dict)

    def may_invoke(self, function: str) -> bool:
        return "invoke:*" in self.scopes or f"invoke:{function}" in self.scopes

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


class AuthError(Exception):
    def __init__(self, status: int, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key_id = key_id


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyVerifier:
    def __init__(self, state: StateStore, pepper: bytes) -> None:
        self.state = state
        self.pepper = pepper
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        # token → (cached at, principal, valid until): skips the HMAC for a token seen in the last seconds
        self._verified: dict[str, tuple[float, Principal, float]] = {}

    async def _record(self, key_id: str) -> KeyRecord | None:
        cached = self._cache.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        record = await asyncio.to_thread(self.state.key, key_id)
        if len(self._cache) > 10_000:  # unknown ids must not grow the cache without bound
            self._cache.clear()
        self._cache[key_id] = (time.monotonic(), record)
        return record

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        self._verified.clear()  # revocations and rotations are rare; start over

    async def verify(self, token: str) -> Principal:
        seen = self._verified.get(token)
        if seen is not None and time.monotonic() - seen[0] < CACHE_SECONDS and time.time() < seen[2]:
            return seen[1]
        principal, valid_until = await self._verify(token)
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[token] = (time.monotonic(), principal, valid_until)
        return principal

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


def _token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, credentials = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def classify(path: str) -> tuple[str, str | None]:
    """("admin" | "invoke" | "open", function name)."""
    if path.startswith("/api/") or path == "/api" or path == "/metrics":
        return "admin", None
    match = _MODEL_PATH.match(path)
    if match:
        return "invoke", match.group(1)
    return "open", None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, platform: Any) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind, function = classify(scope["path"])
        if kind == "open":
            await self.app(scope, receive, send)
            return
        if kind == "invoke":
            revision = self.platform.functions.get(function)
            if revision is None or revision.function.spec.auth.public:
                await self.app(scope, receive, send)  # unknown → the route answers 404; public → open
                return
        token = _token(scope)
        try:
            if token is None:
                raise AuthError(401, "an API key is required: send 'Authorization: Bearer fns_…' or 'X-API-Key'")
            principal = await self.platform.keys.verify(token)
            if kind == "admin" and not principal.is_admin:
                raise AuthError(403, f"API key {principal.key_id} has no 'admin' scope", principal.key_id)
            if kind == "invoke" and not principal.may_invoke(function or ""):
                raise AuthError(403, f"API key {principal.key_id} may not invoke {function!r} "
                                     f"(scopes: {', '.join(principal.scopes)})", principal.key_id)
        except AuthError as exc:
            response = error_response(Request(scope), exc.status, str(exc),
                                      **({"keyId": exc.key_id} if exc.key_id else {}))
            if exc.status == 401:
                challenge = 'Bearer realm="fnserve"' + ('' if token is None else ', error="invalid_token"')
                response.headers["WWW-Authenticate"] = challenge
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
