"""/api/audit: the audit log of admin actions, oldest first (?since=, ?actor=, ?action=, ?limit=)."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fnserve.router.admin import bounded_int
from fnserve.router.errors import BadRequest
from fnserve.router.services.audit import AuditLog


def parse_since(text: str) -> float:
    """Unix seconds, or an ISO-8601 date or time (UTC unless it names its zone); raises BadRequest."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError):  # not a date, or one before year 1 once its offset is applied
            raise BadRequest(f"since must be unix seconds or an ISO-8601 date or time (got {text!r})") from None
    if not math.isfinite(value):
        raise BadRequest(f"since must be a finite number of seconds (got {text!r})")
    return value


class AuditRoutes:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def entries(self, request: Request) -> Response:
        """Admin actions, oldest first: ?since= (unix seconds or ISO-8601), ?actor= (a key id), ?action=
        (e.g. key.revoke, or key. for every key action), ?limit= (the newest N, default 1000)."""
        params = request.query_params
        since = parse_since(params["since"]) if params.get("since") else None
        limit = bounded_int(request, "limit", 1000, 1, 100_000, "")
        found = await self.audit.entries(since, params.get("actor") or None, params.get("action") or None, limit)
        return JSONResponse({"entries": [e.to_dict() for e in found]})

    def routes(self) -> list[Route]:
        return [Route("/api/audit", self.entries, methods=["GET"], name="audit")]
