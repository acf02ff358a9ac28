"""GET /openapi.json, generated from the app's actual route table so it cannot drift from the code.

Request bodies come from the models the admin routes validate with (router/admin/bodies.py); every
error status a route can answer is listed with the one error shape, and ``default`` says that any other
is that shape too — the fuzz test in tests/ holds the router to this document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import fnserve
from fnserve.replica_contract import OPENAI_PREFIX
from fnserve.router.auth import operator_scope
from fnserve.router.inference import PREFIXES


def _error(schema: str) -> dict[str, Any]:
    return {"description": "Error", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_ERROR, _OPENAI_ERROR = _error("Error"), _error("OpenAIError")
#: What each kind of route may answer besides success (the statuses docs/errors.md explains).
_STATUSES = {
    "admin": ["400", "401", "403", "404", "408", "409", "413", "422", "503"],
    "inference": ["400", "401", "403", "404", "408", "413", "429", "500", "503", "504"],
    "open": ["503"],
}
#: Query parameters the routes read (by route name).
_QUERY: dict[str, dict[str, dict[str, Any]]] = {
    "list_functions": {"view": {"type": "string", "enum": ["full", "brief"],
                                "description": "brief: the numbers the console's list shows, no replica list"}},
    "list_jobs": {"limit": {"type": "integer", "description": "Clamped to 1..1000; default 50."}},
    "function_logs": {"tail": {"type": "integer", "description": "Lines per replica, clamped to 1..10000."},
                      "follow": {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"],
                                 "description": "1: go on streaming what the replicas write"}},
    "job_logs": {"follow": {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"]}},
    "usage": {"key": {"type": "string"}, "function": {"type": "string"},
              "since": {"type": "string", "pattern": r"^(\d{4}-\d{2}-\d{2})?$"}},
    "audit": {"since": {"type": "string", "description": "Unix seconds, or an ISO-8601 date or time (UTC unless "
                                                         "it names its zone)."},
              "actor": {"type": "string", "description": "A key id, or system."},
              "action": {"type": "string", "description": "One action (key.revoke), or a family ending in a dot "
                                                          "(key.)."},
              "limit": {"type": "integer", "description": "The newest N entries, clamped to 1..100000; default 1000."}},
}


_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
              "FP64", "BYTES"]
#: Request bodies of the inference routes, after KServe V1 and the Open Inference Protocol's REST spec.
_INFERENCE_BODIES: dict[str, dict[str, Any]] = {
    "V1Request": {"type": "object", "required": ["instances"],
                  "properties": {"instances": {"type": "array", "minItems": 1}}},
    "V2Request": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {"name": {"type": "string"}, "datatype": {"enum": _DATATYPES},
                           "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                           "parameters": {"type": "object"}, "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"},
                                                              "parameters": {"type": "object"}}}}}},
    "GenerateRequest": {"type": "object", "required": ["text_input"], "properties": {
        "text_input": {"type": "string"}, "parameters": {"type": "object"}}},
    "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string"}, "stream": {"type": "boolean"}, "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"],
                                                               "properties": {"role": {"type": "string"}}}}}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": {"type": "string"}, "prompt": {"type": "string"}, "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1}}},
    "EmbeddingRequest": {"type": "object", "required": ["model", "input"], "properties": {
        "model": {"type": "string"}, "input": {"anyOf": [{"type": "string"}, {"type": "array",
                                                                                 "items": {"type": "string"}}]}}},
}
#: The request body of each inference POST route, by how its path ends.
_BODIES = (("/chat/completions", "ChatRequest"), ("/completions", "CompletionRequest"),
           ("/embeddings", "EmbeddingRequest"), ("/generate", "GenerateRequest"),
           ("/generate_stream", "GenerateRequest"))


def _body_schema(path: str) -> str:
    return next((schema for end, schema in _BODIES if path.endswith(end)),
                "V1Request" if path.startswith("/v1/") else "V2Request")


def _kind(path: str) -> str:
    if operator_scope(path) is not None:
        return "admin"
    return "inference" if path.startswith(PREFIXES) else "open"


def _request_body(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"required": bool(schema.get("required")), "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def build_spec(routes: list[Any], functions: list[str] | None = None) -> dict[str, Any]:
    """The document for ``routes``; ``functions`` (deployed now) are offered as examples of ``name``."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "requestId": {"type": "string"}}},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
        **_INFERENCE_BODIES}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema or route.path == "/openapi.json":
            continue
        kind = _kind(route.path)
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"},
                   **({"examples": {f: {"value": f} for f in functions}}
                      if p == "name" and kind == "inference" and functions else {})}
                  for p in re.findall(r"{(\w+)}", route.path)]
        params += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in _QUERY.get(route.name, {}).items()]
        doc = (route.endpoint.__doc__ or "").strip().splitlines()
        for method in sorted((route.methods or set()) - {"HEAD"}):
            error = _OPENAI_ERROR if route.path.startswith(OPENAI_PREFIX) else _ERROR
            responses: dict[str, Any] = {"2XX": {"description": "OK"}}
            responses.update({code: error for code in _STATUSES[kind]})
            responses["default"] = error
            operation: dict[str, Any] = {
                "operationId": route.name, "summary": doc[0] if doc else route.name,
                "tags": ["admin" if kind == "admin" else "inference"], "parameters": params, "responses": responses}
            model = getattr(route.endpoint, "body_model", None)
            if model is not None:
                operation["requestBody"] = _request_body(model, components)
            elif method == "POST" and kind == "inference":
                operation["requestBody"] = _json_body(_body_schema(route.path))
            paths.setdefault(route.path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "fnserve router", "version": fnserve.__version__,
                 "description": "KServe V1 / Open Inference Protocol V2 inference (with its generate extension), "
                                "OpenAI-compatible routes under /openai/v1 and the fnserve admin API."},
        "paths": paths,
        "components": {"schemas": components},
    }


def routes(functions: Callable[[], list[str]]) -> list[Route]:
    """The document's route; ``functions`` names the deployed functions (examples of ``name``)."""
    async def openapi(request: Request) -> Response:
        """This document."""
        return JSONResponse(build_spec(request.app.routes, functions()))

    return [Route("/openapi.json", openapi, methods=["GET"], name="openapi")]
