"""The generative routes' part in the router: OpenAI-compatible (``/openai/v1``, KServe's prefix) and the
Open Inference generate extension (``/v2/models/{name}/generate``, ``/generate_stream``).

The replica implements them (runtimes/generative.py); the router only needs three things from a body
before it forwards it untouched: which function it is for (OpenAI names it in ``model``, not in the
path), how many tokens it may produce (what admission reserves), and whether that function serves the
route at all. ``GET /openai/v1/models`` is the router's own: the functions the caller's key may invoke.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fnserve.records import Revision
from fnserve.router.body import parse_json
from fnserve.router.invocation import EMBED, GENERATE, Invocation, Principal
from fnserve.router.services.functions import FunctionService

OPENAI = "/openai/v1"
#: OpenAI route → (action, what it is called in messages)
OPENAI_ACTIONS = {f"{OPENAI}/chat/completions": (GENERATE, "chat completions"),
                  f"{OPENAI}/completions": (GENERATE, "completions"),
                  f"{OPENAI}/embeddings": (EMBED, "embeddings")}
_TASKS = {GENERATE: "text-generation", EMBED: "feature-extraction"}


def task_of(revision: Revision) -> str | None:
    options = revision.function.spec.transformers
    return options.task if revision.function.spec.runtime == "transformers" and options is not None else None


def invoke_path(revision: Revision) -> str:
    """Where a function is called: a text generator on OpenAI's chat route (it refuses :predict)."""
    if task_of(revision) == "text-generation":
        return f"{OPENAI}/chat/completions"
    return f"/v1/models/{revision.name}:predict"


def read_openai(body: bytes) -> tuple[str | None, dict[str, Any], tuple[int, str, str | None] | None]:
    """(model, the parsed body, a problem answered as 400) of an OpenAI request body."""
    try:
        data = parse_json(body) if body else None
    except ValueError as exc:
        return None, {}, (400, f"the request body is not valid JSON: {exc}", None)
    if not isinstance(data, dict):
        return None, {}, (400, "the request body must be a JSON object", None)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        return None, data, (400, "you must provide a model parameter (the function's name)", "model")
    return model, data, None


def requested_tokens(invocation: Invocation, data: dict[str, Any]) -> None:
    """Set the completion tokens the request may produce, for admission to reserve: the body's
    ``max_completion_tokens`` / ``max_tokens`` (V2: ``parameters.max_tokens``), else the function's
    ``maxNewTokens``; never more than its context. A malformed value reserves the default: the replica
    refuses the request anyway."""
    revision = invocation.revision
    invocation.streamed = data.get("stream") is True or invocation.upstream_path.endswith("/generate_stream")
    if invocation.action != GENERATE or revision is None or revision.function.spec.transformers is None:
        return
    options = revision.function.spec.transformers
    source = data.get("parameters") if invocation.upstream_path.startswith("/v2/") else data
    asked = None
    if isinstance(source, dict):
        asked = source.get("max_completion_tokens", source.get("max_tokens"))
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
        asked = options.max_new_tokens
    invocation.max_tokens = min(asked, options.max_length)


def unsupported(invocation: Invocation) -> str | None:
    """Why the invocation's function does not serve its route (None: it does)."""
    revision = invocation.revision
    wanted = _TASKS.get(invocation.action)
    if revision is None or wanted is None or task_of(revision) == wanted:
        return None
    what = OPENAI_ACTIONS.get(invocation.upstream_path, (None, "generate"))[1]
    task = task_of(revision)
    return (f"function {invocation.function!r} does not serve {what}: it is a "
            f"{task + ' function' if task else revision.function.spec.runtime + ' model'}, not {wanted}")


class ModelList:
    """``GET /openai/v1/models``: OpenAI's model list, one entry per function the key may invoke."""

    def __init__(self, functions: FunctionService) -> None:
        self.functions = functions

    async def list_models(self, request: Request) -> Response:
        """The functions the caller's key may invoke, as OpenAI model objects."""
        principal: Principal | None = request.scope.get("state", {}).get("principal")
        models = [{"id": name, "object": "model", "created": int(revision.created_at), "owned_by": "fnserve",
                   "task": task_of(revision)}
                  for name, revision in sorted(self.functions.table.items())
                  if revision.function.spec.auth.public or (principal is not None and principal.may_invoke(name))]
        return JSONResponse({"object": "list", "data": models})

    def routes(self) -> list[Route]:
        return [Route(f"{OPENAI}/models", self.list_models, methods=["GET"], name="openai_models")]
