"""One inference request as the router's steps see it: built once when it arrives, then read and filled
in by auth (the principal), admission (limits, the slot it holds, rate headers), the proxy (status,
upstream time, cold start) and accounting, which records it once when it ends.

Carried in the ASGI scope under one key, so pure ASGI middlewares pass it along without knowing each
other; ``of(scope)`` is the typed way to read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

from fnserve.records import Revision
from fnserve.router.quota import Limits

SCOPE_KEY = "fnserve.invocation"
Headers = list[tuple[bytes, bytes]]

#: Actions that generate tokens (OpenAI chat/completions, V2 generate) and that count them (embeddings).
GENERATE, EMBED = "generate", "embed"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens admission took from one bucket before the answer, settled to the real count at its end."""

    limit: str
    """"tpm" (``where`` is the bucket's rate per second) or "tpd" (``where`` is the UTC day)."""
    subject: str
    where: float | str
    tokens: int


@dataclass(frozen=True)
class Principal:
    """The caller a verified key stands for."""

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

    def may(self, operator_scope: str) -> bool:
        """The key opens the operators' paths of ``operator_scope`` ("admin", or "metrics", which admin
        keys hold too)."""
        return operator_scope in self.scopes or "admin" in self.scopes


@dataclass(slots=True, eq=False)
class Invocation:
    function: str
    """The function named in the path."""
    revision: Revision | None
    """Its serving revision; None for an unknown function (the route answers 404)."""
    action: str
    """"predict" (a body to run), "model" (metadata and readiness), "generate" or "embed" (token-metered)."""
    version: str | None
    """The version the path names (``/versions/{version}``), if any."""
    upstream_path: str
    """The path the replica is asked at (a version's path without its ``/versions/{version}``)."""
    request_id: str
    route: str = ""
    """The route's template (``/v2/models/{name}/infer``): the trace's span name, never the raw path."""
    started: float = field(default_factory=time.perf_counter)
    now: float = field(default_factory=time.time)
    principal: Principal | None = None
    limits: Limits | None = None
    subject: str = ""
    """Who the limits are counted for: the key id, or ``ip:<address>`` for a public function."""
    slot: tuple[str, str] | None = None
    """The concurrency slot admission took, (subject, token), given back when the request ends."""
    headers: Headers = field(default_factory=list)
    """Added to the answer, whatever it is (the RateLimit headers)."""
    status: int = 500
    """What the client was answered; 499 when it went away before an answer."""
    upstream_ms: float = 0.0
    cold_start_ms: float | None = None
    cold_start_first: bool = False
    """The first request its replica's start made wait (the console counts cold starts by these)."""
    openai: bool = False
    """Asked under /openai/v1: errors take OpenAI's shape."""
    canary: bool = False
    """Routed to the function's canary revision (``revision`` is it)."""
    body: bytes | None = None
    """The request body, when it had to be read to resolve the request (OpenAI's ``model``, max_tokens)."""
    problem: tuple[int, str, str | None] | None = None
    """(status, message, param) of a request that could not be resolved, answered after auth."""
    max_tokens: int = 0
    """Completion tokens the request may produce: what admission reserves for it."""
    streamed: bool = False
    """The client asked for a streamed answer (``stream: true``, ``generate_stream``)."""
    reservations: list[Reservation] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    """Time from sending the request to the replica to the first chunk of a streamed answer."""
    chunk_gaps_ms: list[float] = field(default_factory=list)
    """Pauses between the chunks of a streamed answer."""

    @property
    def metered(self) -> bool:
        """The request is counted in tokens (and token limits apply to it)."""
        return self.action in (GENERATE, EMBED)

    @property
    def key_id(self) -> str:
        """The ledger's name for the caller."""
        return self.principal.key_id if self.principal is not None else "public"

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def of(scope: Scope) -> Invocation | None:
    """The invocation of an inference request (None for any other request)."""
    return scope.get(SCOPE_KEY)
