"""/api/usage: the usage ledger per key × function × UTC day."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fnserve.router.errors import BadRequest
from fnserve.router.services.accounting import AccountingService


class UsageRoutes:
    def __init__(self, accounting: AccountingService) -> None:
        self.accounting = accounting

    async def usage(self, request: Request) -> Response:
        """The usage ledger per key × function × day (?key=, ?function=, ?since=YYYY-MM-DD)."""
        params = request.query_params
        since = params.get("since")
        if since and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", since):
            raise BadRequest(f"since must be a date YYYY-MM-DD (got {since!r})")
        return JSONResponse({"usage": await self.accounting.usage(params.get("key"), params.get("function"), since)})

    def routes(self) -> list[Route]:
        return [Route("/api/usage", self.usage, methods=["GET"], name="usage")]
