"""The audit log: every admin action — who (the key id), what, on what, how it ended, the request id and
the client's address — appended to the state store by the service that carries the action out, never
by an HTTP handler. What is recorded is chosen by the services: names, ids, numbers; never a token, a
secret or a manifest's files.

Actions the platform takes by itself (``fnserve up --deploy``, a training job rolling its function
forward) are recorded with the actor ``system``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fnserve.database import StoreUnavailable
from fnserve.records import AuditEntry
from fnserve.state import StateStore

log = logging.getLogger("fnserve.audit")


@dataclass(frozen=True)
class Actor:
    """Who asked for an admin action, as the audit log records it."""

    key_id: str
    request_id: str = ""
    client: str = ""


SYSTEM = Actor("system")


def _status(exc: BaseException) -> int:
    """The HTTP status the failed action is answered with: the error's own (every error a service raises
    carries one); anything else is the router's fault."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else 500


def _printable(text: str) -> str:
    """A client's text as the log can keep it (PostgreSQL refuses NUL; an entry is never lost for one)."""
    return text.replace("\x00", "\\x00")


def _printable_values(detail: dict[str, Any]) -> dict[str, Any]:
    return {k: _printable(v) if isinstance(v, str) else v for k, v in detail.items()}


class AuditLog:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    @contextlib.asynccontextmanager
    async def action(self, actor: Actor, action: str, target: str, **detail: Any) -> AsyncIterator[dict[str, Any]]:
        """Record ``action`` on ``target`` once the body has run: "ok", or the error it raised (re-raised).
        The body may add to the yielded detail (a new revision's number, a created key's id)."""
        try:
            yield detail
        except Exception as exc:
            await self._append(actor, action, target, str(exc) or type(exc).__name__, _status(exc), detail)
            raise
        await self._append(actor, action, target, "ok", 200, detail)

    async def _append(self, actor: Actor, action: str, target: str, outcome: str, status: int,
                      detail: dict[str, Any]) -> None:
        entry = AuditEntry(time.time(), actor.key_id, action, _printable(target), _printable(outcome[:2000]), status,
                           actor.request_id, actor.client, _printable_values(detail))
        try:
            await asyncio.to_thread(self.state.append_audit, entry)
        except StoreUnavailable:  # the action's caller gets the 503; nothing else to say here
            log.warning("could not append to the audit log (the database is down): %s", entry)
            raise
        except Exception:
            log.exception("could not append to the audit log: %s", entry)
            raise

    async def entries(self, since: float | None, actor: str | None, action: str | None,
                      limit: int) -> list[AuditEntry]:
        return await asyncio.to_thread(self.state.audit, since, actor, action, limit)
