"""The Open Inference Protocol's generate extension (as Triton and KServe's LLM runtimes serve it).

- ``POST /v2/models/{name}/generate``: ``{"text_input": "...", "parameters": {max_tokens, temperature,
  top_p, stop, seed}}`` → ``{"model_name", "text_output", "finish_reason", "usage"}``;
- ``POST /v2/models/{name}/generate_stream``: the same request; server-sent events
  ``data: {"model_name", "text_output"}`` with each step's text, the last with ``finish_reason``, then
  the usage comment (runtimes/streaming.py) as the last event.

Errors are the platform's ``{"error": "message"}``: 404 for another model's name, 400 for anything
wrong with the request (a function that is not text-generation included).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from runtimes.base import FunctionModel
from runtimes.errors import RequestError
from runtimes.generation import Chunk, Generation, GenerationFailed, TextGenerator
from runtimes.openai_routes import describe
from runtimes.params import Body, Sampling, parse_json, start_generation, validate
from runtimes.streaming import event_stream, sse, token_headers, whole_text


class GenerateRequest(Body):
    text_input: str
    parameters: Sampling | None = None


class GenerateRoutes:
    """Bound to its model after it is added to the app, as OpenAIRoutes is."""

    model: FunctionModel

    def bind(self, model: FunctionModel) -> None:
        self.model = model

    async def _start(self, request: Request) -> tuple[Generation, dict[str, Any]]:
        name = request.path_params["model_name"]
        if name != self.model.name:
            raise RequestError(404, f"model {name!r} is not served here: this replica serves {self.model.name!r}")
        generator = self._generator()
        body: GenerateRequest = validate(GenerateRequest, parse_json(await request.body()))
        sampling = (body.parameters or Sampling()).sampling()
        text = body.text_input
        generation = await start_generation(generator, lambda: generator.encode_text(text), sampling, "text_input")
        return generation, {"model_name": self.model.name}

    def _generator(self) -> TextGenerator:
        if self.model.generator is None:
            raise RequestError(400, f"generate needs a text-generation function; {self.model.name!r} is "
                                    f"{describe(self.model)}: use /v2/models/{self.model.name}/infer")
        return self.model.generator

    async def generate(self, request: Request) -> Response:
        generation, head = await self._start(request)
        try:
            text = await whole_text(request, generation)
        except GenerationFailed as exc:
            raise RequestError(500, f"function {self.model.name!r}: generation failed: {exc}") from None
        body = {**head, "text_output": text, "finish_reason": generation.finish_reason,
                "usage": {"prompt_tokens": generation.prompt_tokens,
                          "completion_tokens": generation.completion_tokens,
                          "total_tokens": generation.prompt_tokens + generation.completion_tokens}}
        return Response(orjson.dumps(body), media_type="application/json",
                        headers=token_headers(generation.prompt_tokens, generation.completion_tokens))

    async def generate_stream(self, request: Request) -> Response:
        generation, head = await self._start(request)

        def render(chunk: Chunk) -> bytes:
            event = {**head, "text_output": chunk.text}
            if chunk.finish_reason is not None:
                event["finish_reason"] = chunk.finish_reason
            return sse(event)

        return event_stream(request, generation, render,
                            failure=lambda message: sse({"error": f"function {self.model.name!r}: {message}"}))


def install(app: FastAPI, model: FunctionModel | None = None) -> GenerateRoutes:
    """Add the routes to KServe's app (before it starts); without ``model``, bind one later."""
    routes = GenerateRoutes()
    if model is not None:
        routes.bind(model)
    app.add_api_route("/v2/models/{model_name}/generate", routes.generate, methods=["POST"])
    app.add_api_route("/v2/models/{model_name}/generate_stream", routes.generate_stream, methods=["POST"])
    return routes
