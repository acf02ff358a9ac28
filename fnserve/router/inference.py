"""The inference routes (KServe V1, Open Inference V2 and its generate extension, OpenAI-compatible):
resolve → (auth, admission) → acquire → forward → release.

The router holds no protocol logic of its own: the replica (a KServe ModelServer) parses bodies and
produces protocol errors, and the router passes them through, so the answer is exactly what KServe
would give, plus routing, request ids, keys and limits.

An inference request is recognised once, when it arrives (``ResolveMiddleware``): the route it
matches, its function and serving revision, the version it names, go into its :class:`Invocation`.
After auth and admission, ``DispatchMiddleware`` hands it straight to :meth:`Inference.handle`; the
same routes stand in the app's route table, so the OpenAPI document lists them and a wrong method on
their paths gets Starlette's 405. A generative request's body is read when it is resolved, since an
OpenAI body names its function and every generative one the tokens admission reserves
(router/generative.py).
"""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fnserve import __version__, tracing
from fnserve.backends.base import BackendError, Serving
from fnserve.router import generative
from fnserve.router import invocation as invocations
from fnserve.router.body import parse_json
from fnserve.router.errors import error_response, request_id
from fnserve.router.invocation import GENERATE, SCOPE_KEY, Invocation, Principal
from fnserve.router.proxy import Deadlines, Proxy, respond_error
from fnserve.router.services.functions import FunctionService
from fnserve.router.upstream import Dropped, Unreachable

PREFIXES = ("/v1/models/", "/v2/models/", generative.OPENAI + "/")


class _Action:
    """A route's endpoint: the ASGI app Starlette would call, were the request not dispatched first."""

    def __init__(self, inference: Inference, action: str, doc: str) -> None:
        self.inference = inference
        self.action = action
        self.__doc__ = doc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        invocation = invocations.of(scope)
        assert invocation is not None, "inference routes are reached through ResolveMiddleware"
        await self.inference.handle(invocation, scope, receive, send)


async def _body(receive: Receive) -> bytes | None:
    """The whole request body (None: the client went away first)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Inference:
    def __init__(self, functions: FunctionService, serving: Serving, proxy: Proxy) -> None:
        self.functions = functions
        self.serving = serving
        self.proxy = proxy
        model = _Action(self, "model", "Model metadata and readiness, answered by the function's own predictor.")
        predict = _Action(self, "predict", "Run an inference request on the function's predictor.")
        generate = _Action(self, GENERATE, "Generate text (Open Inference generate extension); generate_stream "
                                           "streams it as server-sent events.")
        openai = {path: _Action(self, action, f"OpenAI-compatible {what}: the body's model names the function.")
                  for path, (action, what) in generative.OPENAI_ACTIONS.items()}
        self.routes = [
            Route("/v1/models/{name}", model, methods=["GET"], name="v1_model"),
            Route("/v1/models/{name}:predict", predict, methods=["POST"], name="v1_predict"),
            Route("/v1/models", self.list_models, methods=["GET"], name="v1_models"),
            Route("/v2", server_metadata, methods=["GET"], name="v2_metadata"),
            Route("/v2/health/live", live, methods=["GET"], name="v2_live"),
            Route("/v2/health/ready", self.ready, methods=["GET"], name="v2_ready"),
            Route("/v2/models/{name}", model, methods=["GET"], name="v2_model"),
            Route("/v2/models/{name}/ready", model, methods=["GET"], name="v2_model_ready"),
            Route("/v2/models/{name}/infer", predict, methods=["POST"], name="v2_infer"),
            Route("/v2/models/{name}/versions/{version}", model, methods=["GET"], name="v2_model_version"),
            Route("/v2/models/{name}/versions/{version}/ready", model, methods=["GET"],
                  name="v2_model_version_ready"),
            Route("/v2/models/{name}/versions/{version}/infer", predict, methods=["POST"], name="v2_infer_version"),
            Route("/v2/models/{name}/generate", generate, methods=["POST"], name="v2_generate"),
            Route("/v2/models/{name}/generate_stream", generate, methods=["POST"], name="v2_generate_stream"),
            *(Route(path, action, methods=["POST"], name="openai_" + path.rsplit("/", 1)[1])
              for path, action in openai.items()),
            *generative.ModelList(functions).routes(),
        ]
        self._actions = [(r.path_regex, r.methods or set(), r.endpoint, r.path) for r in self.routes
                         if isinstance(r.endpoint, _Action)]

    def resolve(self, scope: Scope) -> Invocation | None:
        """The invocation an inference request is (None: not one of the inference routes). An OpenAI
        request's function is named in its body: its name is filled in by :meth:`read`."""
        path, method = scope["path"], scope["method"]
        for pattern, methods, action, route in self._actions:
            match = pattern.match(path)
            if match is not None and method in methods:
                groups = match.groupdict()
                name, version = groups.get("name", ""), groups.get("version")
                upstream = path if version is None else path.replace(f"/versions/{version}", "", 1)
                revision, canary = (self.functions.pinned(name, version) if version is not None else
                                    self.functions.pick(name)) if name else (None, False)
                return Invocation(name, revision, action.action, version, upstream, request_id(scope), route,
                                  openai=path.startswith(generative.OPENAI), canary=canary)
        return None

    def read(self, invocation: Invocation, body: bytes) -> None:
        """A metered request's body: its function (OpenAI), the tokens it may produce, its problems."""
        invocation.body = body
        if invocation.openai:
            model, data, invocation.problem = generative.read_openai(body)
            if model is not None:
                invocation.function = model
                invocation.revision, invocation.canary = self.functions.pick(model)
        else:
            try:
                parsed = parse_json(body) if body else None
            except ValueError:
                parsed = None  # the replica says what is wrong with it
            data = parsed if isinstance(parsed, dict) else {}
        generative.requested_tokens(invocation, data)

    async def handle(self, invocation: Invocation, scope: Scope, receive: Receive, send: Send) -> None:
        revision, name = invocation.revision, invocation.function
        if invocation.problem is not None:
            status, message, param = invocation.problem
            await respond_error(invocation, send, status, message, fields={"param": param} if param else None)
            return
        if revision is None:
            await respond_error(invocation, send, 404, f"function {name!r} not found" if not invocation.openai else
                                f"the model {name!r} does not exist or you do not have access to it",
                                fields={"param": "model", "code": "model_not_found"} if invocation.openai else None)
            return
        version = invocation.version
        if version is not None and version != str(revision.number):  # a function's versions are its revisions
            await respond_error(invocation, send, 404, f"function {name!r} has no version {version!r} serving "
                                                       f"(version {revision.number} is current)")
            return
        why_not = generative.unsupported(invocation)
        if why_not is not None:
            await respond_error(invocation, send, 404, why_not, fields={"param": "model"} if invocation.openai else None)
            return
        body = invocation.body if invocation.body is not None else await self.body(invocation, receive, send)
        if body is None:
            return
        for attempt in (1, 2):  # a connection refused before any byte was sent is retried once elsewhere
            try:
                with tracing.span("queue wait", {"fnserve.function": name}):
                    # a canary promoted or dropped since this request was routed: the backend serves it from
                    # the function's revision
                    endpoint = await self.serving.acquire(name, canary=invocation.canary)
                    if endpoint.cold_start_ms is not None:  # the part of the wait a replica spent starting
                        now = time.time_ns()
                        tracing.backdated("cold start", now - int(endpoint.cold_start_ms * 1e6), now,
                                          {"fnserve.replica": endpoint.replica})
            except BackendError as exc:
                await respond_error(invocation, send, exc.status, str(exc), retry_after=exc.retry_after)
                return
            invocation.cold_start_ms, invocation.cold_start_first = endpoint.cold_start_ms, endpoint.first_cold
            try:
                with tracing.span("upstream", {"fnserve.replica": endpoint.replica,
                                               "fnserve.revision": revision.number}, SpanKind.CLIENT):
                    await self.proxy.forward(invocation, scope["method"], scope["query_string"], scope["headers"],
                                             body, endpoint.url, endpoint.replica, Deadlines.of(revision.function.spec),
                                             send, receive)
                return
            except Unreachable as exc:
                self.serving.unreachable(endpoint)
                invocation.cold_start_ms = None
                if attempt == 2:
                    await respond_error(invocation, send, 503, str(exc), retry_after=1)
                    return
            except Dropped:
                # A healthy replica never closes a connection it was sent a request on (the pool retires idle
                # connections before the replica would): it died, or this request broke it. Out of rotation
                # at once, so the requests behind this one do not follow it; this one is not sent again.
                self.serving.unreachable(endpoint)
                await respond_error(invocation, send, 503, f"function {name!r}: replica closed the connection "
                                                           f"before answering", retry_after=1)
                return
            finally:
                self.serving.release(endpoint)

    @staticmethod
    async def body(invocation: Invocation, receive: Receive, send: Send) -> bytes | None:
        """The request's whole body; None when there is none to go on with (the answer, if any, is sent)."""
        try:
            body = await _body(receive)
        except HTTPException as exc:  # the body guard's 408 / 413
            await respond_error(invocation, send, exc.status_code, exc.detail, headers=exc.headers)
            return None
        if body is None:
            invocation.status = 499  # nginx's word for a client that left before its answer
        return body

    async def list_models(self, request: Request) -> Response:
        """KServe V1's model list: the functions the caller may invoke (the public ones without a key)."""
        principal: Principal | None = request.scope.get("state", {}).get("principal")
        names = [name for name, revision in sorted(self.functions.table.items())
                 if revision.function.spec.auth.public or (principal is not None and principal.may_invoke(name))]
        return JSONResponse({"models": names})

    async def ready(self, request: Request) -> Response:
        """The router is up and has restored its deployed functions."""
        if not self.functions.restored:
            return error_response(request, 503, "restoring deployed functions", retry_after=1)
        return JSONResponse({"ready": True})


async def server_metadata(request: Request) -> Response:
    """Open Inference server metadata: this router's name and version, and the protocol extensions it
    serves (generate, for text-generation functions)."""
    return JSONResponse({"name": "fnserve", "version": __version__, "extensions": ["generate"]})


async def live(request: Request) -> Response:
    """The router process is up."""
    return JSONResponse({"live": True})


class ResolveMiddleware:
    """Recognises an inference request once, as it arrives, and puts its Invocation in the scope."""

    def __init__(self, app: ASGIApp, inference: Inference) -> None:
        self.app = app
        self.inference = inference

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIXES):
            invocation = self.inference.resolve(scope)
            if invocation is not None:
                if invocation.metered and (invocation.revision is not None or invocation.openai):
                    body = await self.inference.body(invocation, receive, send)
                    if body is None:
                        return
                    self.inference.read(invocation, body)
                scope[SCOPE_KEY] = invocation
        await self.app(scope, receive, send)


class DispatchMiddleware:
    """The last step before the route table: an invocation goes straight to its handler."""

    def __init__(self, app: ASGIApp, inference: Inference) -> None:
        self.app = app
        self.inference = inference

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        invocation = scope.get(SCOPE_KEY)
        if invocation is not None:
            await self.inference.handle(invocation, scope, receive, send)
        else:
            await self.app(scope, receive, send)
