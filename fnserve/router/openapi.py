"""GET /openapi.json, generated from the app's actual route table so it cannot drift from the code."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import fnserve

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_STATUSES = {"GET": ["200", "404"], "POST": ["200", "400", "404", "503", "504"], "DELETE": ["200", "404"]}


def build_spec(routes: list[Any]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or route.path == "/openapi.json":
            continue
        tag = "admin" if route.path.startswith("/api/") else "inference"
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in re.findall(r"{(\w+)}", route.path)]
        doc = (route.endpoint.__doc__ or "").strip().splitlines()
        for method in sorted((route.methods or set()) - {"HEAD"}):
            responses: dict[str, Any] = {}
            for code in _STATUSES.get(method, ["200"]):
                responses[code] = {"description": "OK"} if code == "200" else _ERROR
            paths.setdefault(route.path, {})[method.lower()] = {
                "operationId": route.name, "summary": doc[0] if doc else route.name, "tags": [tag],
                "parameters": params, "responses": responses}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fnserve router", "version": fnserve.__version__,
                 "description": "KServe V1 / Open Inference Protocol V2 inference and the fnserve admin API."},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "string"}, "requestId": {"type": "string"}}}}},
    }


async def openapi(request: Request) -> Response:
    """This document."""
    return JSONResponse(build_spec(request.app.routes))


routes = [Route("/openapi.json", openapi, methods=["GET"], name="openapi")]
