"""The platform's records: plain dataclasses for what it remembers — revisions, training jobs, API keys.

They sit below every other module (the store persists them, backends run them, the router serves them)
and import nothing of fnserve but the manifest, so any layer may hold one without pulling in a database
or a web framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnserve.manifest import Function


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


JOB_DONE = ("succeeded", "failed", "timed_out", "cancelled")


@dataclass
class JobRecord:
    """One training job as the platform remembers it."""

    id: str
    """Also the run id its artifacts are published under."""
    name: str
    function: str
    state: str
    """queued → running → succeeded | failed | timed_out | cancelled"""
    manifest: dict[str, Any]
    source_dir: str
    params: dict[str, Any]
    output: str
    """The function's run root the job publishes into (absolute file:// or s3://)."""
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    artifact_uri: str | None = None
    """The published run as a model URI (artifacts://… when in the platform's store)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    deploy: str = ""
    """What deployOnSuccess did: "" (not asked), "revision N", or why it could not."""

    @property
    def done(self) -> bool:
        return self.state in JOB_DONE

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "function": self.function, "state": self.state,
                "params": self.params, "output": self.output, "createdAt": self.created_at,
                "startedAt": self.started_at, "finishedAt": self.finished_at, "exitCode": self.exit_code,
                "message": self.message, "artifactUri": self.artifact_uri, "metrics": self.metrics,
                "deploy": self.deploy, "sourceDir": self.source_dir}


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
    limits: dict[str, Any] = field(default_factory=dict)
    """The key's own limits (rps, burst, concurrency, daily); missing ones come from its tenant."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tenant": self.tenant, "scopes": list(self.scopes),
                "createdAt": self.created_at, "expiresAt": self.expires_at, "revokedAt": self.revoked_at,
                "previousSecretValidUntil": self.previous_until, "limits": self.limits}


@dataclass(frozen=True)
class Rollout:
    """What a function serves: its current revision and, during a canary rollout, the revision beside it
    that takes ``percent`` of the traffic."""

    current: Revision
    canary: Revision | None = None
    percent: int = 0

    @property
    def name(self) -> str:
        return self.current.name

    def revisions(self) -> list[Revision]:
        return [self.current] if self.canary is None else [self.current, self.canary]


@dataclass(frozen=True)
class AuditEntry:
    """One admin action as the audit log keeps it: who, what, on what, how it ended — never a secret."""

    at: float
    actor: str
    """The key id that acted ("-" for none: a request refused before it had one)."""
    action: str
    """function.deploy, function.rollback, key.create, job.submit, …"""
    target: str
    outcome: str
    """"ok", or the error's message."""
    status: int
    request_id: str
    client: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "actor": self.actor, "action": self.action, "target": self.target,
                "outcome": self.outcome, "status": self.status, "requestId": self.request_id,
                "client": self.client, "detail": self.detail}
