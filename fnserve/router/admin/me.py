"""/api/me: what any valid key may know of itself — its attributes, the functions it may invoke, its
limits and what it has used of them today, and its usage rows; and /api/keys/{key_id}/quota, the same
limits and consumption of any key, for an admin.

Any valid key opens /api/me (router/auth.py; a key that may invoke a function opens its example and
stats too): the console signs in with it, and a non-admin key's console is built from these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fnserve.accounting import utc_day
from fnserve.records import KeyRecord, Revision
from fnserve.router.admin import LargeJSONResponse
from fnserve.router.auth import ME_PATH
from fnserve.router.invocation import Principal
from fnserve.router.services.accounting import AccountingService
from fnserve.router.services.admission import AdmissionService
from fnserve.router.services.functions import FunctionService
from fnserve.router.services.keys import KeyService

USAGE_DAYS = 30
"""The days of usage rows /api/me answers with (GET /api/usage has them all, for an admin)."""


class MeRoutes:
    def __init__(self, keys: KeyService, admission: AdmissionService, functions: FunctionService,
                 accounting: AccountingService, brief: Callable[[Revision], dict[str, Any]]) -> None:
        self.keys = keys
        self.admission = admission
        self.functions = functions
        self.accounting = accounting
        self.brief = brief

    def _callable_by(self, key: KeyRecord) -> list[Revision]:
        """The functions a key may invoke: all for an admin key, else those its invoke scopes name (public
        functions are anyone's, but a key's console lists what its key opens) — Principal's own rule."""
        principal = Principal(key.id, key.name, key.tenant, key.scopes)
        return [r for _, r in sorted(self.functions.table.items())
                if principal.is_admin or principal.may_invoke(r.name)]

    async def me(self, request: Request) -> Response:
        """The calling key: its attributes, whether it is an admin key, the functions it may invoke (the
        brief view: no replica addresses or processes, which are the operators'), its limits with today's
        consumption, and its usage rows of the last 30 days (as of the last second's flush)."""
        principal: Principal = request.scope["state"]["principal"]
        record = await self.keys.record(principal.key_id)
        revisions = self._callable_by(record)
        since = utc_day(time.time() - USAGE_DAYS * 86400)
        return LargeJSONResponse({"key": record.to_dict(), "admin": "admin" in record.scopes,
                                  "functions": [self.brief(r) for r in revisions],
                                  "quota": await self.admission.quota(record, revisions, time.time()),
                                  "usage": await self.accounting.usage(record.id, None, since, latest=False)})

    async def quota(self, request: Request) -> Response:
        """One key's limits as they apply to it and what it has used of each daily one today."""
        record = await self.keys.record(request.path_params["key_id"])
        return JSONResponse(await self.admission.quota(record, self._callable_by(record), time.time()))

    def routes(self) -> list[Route]:
        return [Route(ME_PATH, self.me, methods=["GET"], name="me"),
                Route("/api/keys/{key_id}/quota", self.quota, methods=["GET"], name="key_quota")]
