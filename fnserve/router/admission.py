"""AdmissionMiddleware: an invocation's limits, checked before it reaches a replica; its slot given
back and its cost recorded, once, when it ends. Pure ASGI, placed after AuthMiddleware, which has
named the caller. What the limits are and how they count is the admission service's.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnserve import tracing
from fnserve.database import StoreUnavailable
from fnserve.router import invocation as invocations
from fnserve.router.proxy import respond_error
from fnserve.router.services.accounting import AccountingService
from fnserve.router.services.admission import AdmissionService


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, admission: AdmissionService, accounting: AccountingService) -> None:
        self.app = app
        self.admission = admission
        self.accounting = accounting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        invocation = invocations.of(scope)
        if invocation is None or invocation.revision is None:
            await self.app(scope, receive, send)  # not an invocation, or of no function: nothing to count
            return
        client = scope.get("client") or ("unknown", 0)
        recorded = False
        try:
            try:
                with tracing.span("admission"):
                    refusal = await self.admission.admit(invocation, client[0])
            except StoreUnavailable:  # a daily count never read yet, and no database to read it from
                self.accounting.metrics.admission(invocation.key_id, "unavailable")
                await respond_error(invocation, send, 503, "the daily quota cannot be checked now: the state "
                                                           "database is unavailable", retry_after=2)
                return
            self.accounting.metrics.admission(invocation.key_id, "admitted" if refusal is None else
                                              refusal.limit if refusal.status == 429 else "invalid")
            if refusal is not None:
                fields = {"limit": refusal.limit}
                if invocation.principal is not None:
                    fields["keyId"] = invocation.principal.key_id
                if refusal.status == 400:
                    fields["param"] = "max_tokens"
                await respond_error(invocation, send, refusal.status, refusal.message,
                                    retry_after=refusal.retry_after, fields=fields)
                return
            if self.accounting.shared is None:
                await self.app(scope, receive, send)
                return

            async def send_recorded(message: Message) -> None:
                # the shared ledger records the answer before its last byte: what a client saw is on record
                nonlocal recorded
                if not recorded and message["type"] == "http.response.body" and not message.get("more_body"):
                    recorded = True
                    await self.accounting.record(invocation)
                await send(message)

            await self.app(scope, receive, send_recorded)
        finally:
            await self.admission.release(invocation)
            if not recorded:
                recorded = True
                await self.accounting.record(invocation)
