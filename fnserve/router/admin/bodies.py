"""The admin API's request bodies as typed models: checked whole before anything is stored.

A route names its model once, with :func:`with_body`, and is handed the validated body; :func:`read_body`
parses the request strictly (router/body.py: finite numbers, bounded nesting) and validates it, answering 400 with every problem at once,
in the manifest's own ``field: what was expected (got …)`` form. The same models are the request
schemas /openapi.json publishes, so the document and the checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from starlette.requests import Request
from starlette.responses import Response

from fnserve.manifest import Duration, LimitsSpec, problems_from
from fnserve.router.body import parse_json
from fnserve.router.errors import BadRequest
from fnserve.router.services.keys import valid_scope

#: Longest key lifetime or rotation grace period: a century, far past any real one and still a date.
MAX_LIFETIME = 100 * 365 * 86400.0

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class AdminBody(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True,
                              allow_inf_nan=False)


class CreateKey(AdminBody):
    """A new API key; its token is in the response only."""

    name: Name = Field(description="What the key is for.")
    tenant: Name = Field(default="default", description="Whose key it is; tenant defaults apply to it.")
    scopes: list[str] = Field(default_factory=lambda: ["invoke:*"], min_length=1, max_length=100,
                              description="admin, metrics (GET /metrics only), invoke:* or invoke:<function>.")
    expires_in: Duration | None = Field(default=None, gt=0, le=MAX_LIFETIME,
                                        description="Lifetime, e.g. 30d, 12h or 90s; omit for none.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="The key's own limits.")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        wrong = [s for s in scopes if not valid_scope(s)]
        if wrong:
            raise ValueError(f"must be admin, metrics, invoke:* or invoke:<function> (got {wrong[0]!r})")
        return scopes


class RotateKey(AdminBody):
    grace: Duration = Field(default=3600.0, gt=0, le=MAX_LIFETIME,
                            description="How long the previous secret keeps working.")


class Rollback(AdminBody):
    to: StrictInt | None = Field(default=None, ge=1, le=2**31, description="Revision to serve; default the one before.")


class FunctionSource(AdminBody):
    """A manifest and where its folder is: ``sourceDir`` on the router's machine, or ``files`` (the folder
    itself, {path: base64}) for a router elsewhere."""

    manifest: dict[str, Any] = Field(description="The manifest, as function.yaml or train.yaml holds it.")
    source_dir: str | None = Field(default=None, max_length=4096)
    files: dict[str, str] | None = Field(default=None)
    source: str | None = Field(default=None, max_length=4096, description="Where the manifest came from.")


class Deploy(FunctionSource):
    canary: StrictInt | None = Field(default=None, ge=1, le=99, description=(
        "Run the new revision beside the current one as a canary taking this percent of the requests "
        "(promote or roll back later); default: it replaces the current one."))


class SubmitJob(FunctionSource):
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides of the job's spec.params.")


class TenantLimits(LimitsSpec):
    """A tenant's default limits (replacing the previous ones)."""


Body = TypeVar("Body", bound=BaseModel)
Routes = TypeVar("Routes")


def with_body(model: type[Body]) -> Callable[[Callable[[Routes, Request, Body], Awaitable[Response]]],
                                             Callable[[Routes, Request], Awaitable[Response]]]:
    """A route method taking its request body as ``model``, validated before it runs (and published as
    the route's request schema by openapi.py)."""
    def wrap(handler: Callable[[Routes, Request, Body], Awaitable[Response]]) \
            -> Callable[[Routes, Request], Awaitable[Response]]:
        @wraps(handler)
        async def endpoint(routes: Routes, request: Request) -> Response:
            return await handler(routes, request, await read_body(request, model))

        endpoint.body_model = model  # type: ignore[attr-defined]
        return endpoint

    return wrap


async def read_body(request: Request, model: type[Body]) -> Body:
    """The request's JSON body as ``model`` (an empty body is ``{}``); raises BadRequest."""
    raw = await request.body()
    try:
        data = parse_json(raw) if raw.strip() else {}
    except ValueError as exc:
        raise BadRequest(f"request body must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = problems_from(model, exc)
        raise BadRequest("; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in problems),
                         problems) from None
