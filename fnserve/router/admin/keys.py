"""/api/keys and /api/tenants: API keys (a new or rotated key's token is in the answer once and stored
nowhere) and tenants' default limits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fnserve.router.admin import actor_of
from fnserve.router.admin.bodies import CreateKey, RotateKey, TenantLimits, with_body
from fnserve.router.services.keys import KeyService


class KeyRoutes:
    def __init__(self, keys: KeyService) -> None:
        self.keys = keys

    async def list_keys(self, request: Request) -> Response:
        """All API keys (ids and attributes; secrets are never stored)."""
        return JSONResponse({"keys": [k.to_dict() for k in await self.keys.keys()]})

    @with_body(CreateKey)
    async def create(self, request: Request, body: CreateKey) -> Response:
        """Create a key: {name, tenant?, scopes?, expiresIn?, limits?}; the token is in this response only."""
        record, token = await self.keys.create(body.name, body.tenant, body.scopes, body.expires_in,
                                               body.limits.model_dump(exclude_none=True), actor_of(request))
        return JSONResponse({"key": record.to_dict(), "token": token}, 201)

    async def revoke(self, request: Request) -> Response:
        """Revoke a key at once."""
        await self.keys.revoke(request.path_params["key_id"], actor_of(request))
        return JSONResponse({"revoked": request.path_params["key_id"]})

    @with_body(RotateKey)
    async def rotate(self, request: Request, body: RotateKey) -> Response:
        """New secret for a key; the old one keeps working for {grace} (default 1h)."""
        key_id = request.path_params["key_id"]
        token = await self.keys.rotate(key_id, body.grace, actor_of(request))
        return JSONResponse({"keyId": key_id, "token": token, "previousValidForSeconds": body.grace})

    async def tenants(self, request: Request) -> Response:
        """Default limits per tenant."""
        return JSONResponse({"tenants": await self.keys.tenants()})

    @with_body(TenantLimits)
    async def set_tenant(self, request: Request, body: TenantLimits) -> Response:
        """Set a tenant's default limits (replacing the previous ones): {rps?, burst?, concurrency?, daily?, tpm?, tpd?}."""
        tenant, limits = request.path_params["tenant"], body.model_dump(exclude_none=True)
        await self.keys.set_tenant(tenant, limits, actor_of(request))
        return JSONResponse({"tenant": tenant, "limits": limits})

    def routes(self) -> list[Route]:
        return [
            Route("/api/tenants", self.tenants, methods=["GET"], name="list_tenants"),
            Route("/api/tenants/{tenant}", self.set_tenant, methods=["PUT"], name="set_tenant"),
            Route("/api/keys", self.list_keys, methods=["GET"], name="list_keys"),
            Route("/api/keys", self.create, methods=["POST"], name="create_key"),
            Route("/api/keys/{key_id}", self.revoke, methods=["DELETE"], name="revoke_key"),
            Route("/api/keys/{key_id}/rotate", self.rotate, methods=["POST"], name="rotate_key"),
        ]
