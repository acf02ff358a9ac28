"""OpenAI-compatible routes on the replica, under ``/openai/v1`` (the prefix KServe uses for its own).

- ``POST /chat/completions`` and ``POST /completions``: a ``text-generation`` function, whole or streamed;
- ``POST /embeddings``: a ``feature-extraction`` function, the same vectors as its V1 ``:predict``
  (the request goes through the same handler and batcher);
- ``GET /models`` (and ``/models/{id}``): this replica's one model.

The body's ``model`` must be the function's name (else 404 ``model_not_found``); a route for another
task is a 400 with ``param`` ``model`` and code ``wrong_task``. Every error is in OpenAI's shape
(errors.py). Answers carry the router's token-usage headers and streams its usage comment
(runtimes/streaming.py).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from runtimes.base import FunctionModel
from runtimes.errors import RequestError
from runtimes.generation import Chunk, Generation, GenerationFailed, TextGenerator
from runtimes.openai_schema import (
    CHAT_NEUTRAL,
    COMPLETION_NEUTRAL,
    EMBEDDINGS_NEUTRAL,
    ChatRequest,
    CompletionRequest,
    EmbeddingsRequest,
    chat_max_tokens,
    chat_messages,
    check_model,
    check_streaming,
    completion_prompt,
    embedding_inputs,
    take_neutral,
)
from runtimes.params import parse_json, start_generation, validate
from runtimes.streaming import DONE, event_stream, sse, token_headers, whole_text

PREFIX = "/openai/v1"
EMBEDDINGS_TASK = "feature-extraction"


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def usage(generation: Generation) -> dict[str, int]:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def describe(model: FunctionModel) -> str:
    """``a text-classification function``, ``an onnx function``: what a model is, for a wrong-task error."""
    kind = model.task or model.runtime
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} function"


class OpenAIRoutes:
    """The routes for one replica's model. They are added to the app before the model exists (a fork
    server builds the app once for every replica it forks), so the model is bound afterwards."""

    model: FunctionModel
    created: int

    def bind(self, model: FunctionModel) -> None:
        """The model these routes answer for; before it is bound the server does not accept."""
        self.model = model
        self.created = int(time.time())

    # -- what every route checks first ------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, Any]:
        body = parse_json(await request.body())
        name = check_model(body)
        if name != self.model.name:
            raise RequestError(404, f"The model {name!r} does not exist here: this is function "
                                    f"{self.model.name!r}", "model", "model_not_found")
        return body

    def _generator(self, route: str) -> TextGenerator:
        if self.model.generator is None:
            raise RequestError(400, f"{route} needs a text-generation function; {self.model.name!r} is "
                                    f"{self._what()}", "model", "wrong_task")
        return self.model.generator

    def _what(self) -> str:
        return describe(self.model)

    # -- routes -----------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        generator = self._generator("/chat/completions")
        take_neutral(body, CHAT_NEUTRAL)
        chat: ChatRequest = validate(ChatRequest, body)
        check_streaming(chat)
        messages = chat_messages(chat)
        generation = await start_generation(generator, lambda: generator.encode_chat(messages),
                                            chat.sampling(chat_max_tokens(chat)), "messages")
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                 "model": self.model.name}
        if chat.stream:
            return self._stream(request, generation, {**reply, "object": "chat.completion.chunk"}, chat=True,
                                include_usage=chat.stream_options is not None and chat.stream_options.include_usage)
        text = await self._text(request, generation)
        reply["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": generation.finish_reason}]
        return self._whole(reply, generation)

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        generator = self._generator("/completions")
        take_neutral(body, COMPLETION_NEUTRAL)
        completion: CompletionRequest = validate(CompletionRequest, body)
        check_streaming(completion)
        prompt = completion_prompt(completion)
        generation = await start_generation(generator, lambda: generator.encode_text(prompt),
                                            completion.sampling(), "prompt")
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                 "model": self.model.name}
        if completion.stream:
            return self._stream(request, generation, reply, chat=False,
                                include_usage=completion.stream_options is not None
                                and completion.stream_options.include_usage)
        text = await self._text(request, generation)
        reply["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": generation.finish_reason}]
        return self._whole(reply, generation)

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        if self.model.task != EMBEDDINGS_TASK:
            raise RequestError(400, f"/embeddings needs a feature-extraction function; {self.model.name!r} is "
                                    f"{self._what()}", "model", "wrong_task")
        take_neutral(body, EMBEDDINGS_NEUTRAL)
        embeddings: EmbeddingsRequest = validate(EmbeddingsRequest, body)
        texts = embedding_inputs(embeddings)
        headers: dict[str, str] = {}
        result = await self.model.predict({"instances": texts}, dict(request.headers), headers)
        vectors = [p["embedding"] if isinstance(p, dict) else p for p in result["predictions"]]
        if len(vectors) != len(texts) or not all(isinstance(v, list) for v in vectors):
            raise RequestError(500, f"function {self.model.name!r} did not answer one embedding per text")
        tokens = await asyncio.to_thread(self.model.count_tokens, texts)
        base64_wanted = embeddings.encoding_format == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if base64_wanted else v}
                for i, v in enumerate(vectors)]
        return _json({"object": "list", "data": data, "model": self.model.name,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                     {**headers, **token_headers(tokens, 0)})

    async def models(self, request: Request) -> Response:
        return _json({"object": "list", "data": [self._card()]})

    async def model_card(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name != self.model.name:
            raise RequestError(404, f"The model {name!r} does not exist here: this is function "
                                    f"{self.model.name!r}", "model", "model_not_found")
        return _json(self._card())

    # -- answers ----------------------------------------------------------------------------------------
    def _card(self) -> dict[str, Any]:
        return {"id": self.model.name, "object": "model", "created": self.created, "owned_by": "fnserve"}

    async def _text(self, request: Request, generation: Generation) -> str:
        try:
            return await whole_text(request, generation)
        except GenerationFailed as exc:
            raise RequestError(500, f"function {self.model.name!r}: generation failed: {exc}") from None

    def _whole(self, reply: dict[str, Any], generation: Generation) -> Response:
        reply["usage"] = usage(generation)
        return _json(reply, token_headers(generation.prompt_tokens, generation.completion_tokens))

    def _stream(self, request: Request, generation: Generation, head: dict[str, Any], *, chat: bool,
                include_usage: bool) -> Response:
        first = True
        extra = {"usage": None} if include_usage else {}

        def render(chunk: Chunk) -> bytes:
            nonlocal first
            if chat:
                delta = {"role": "assistant", "content": chunk.text} if first else {"content": chunk.text}
                choice: dict[str, Any] = {"index": 0, "delta": delta}
            else:
                choice = {"index": 0, "text": chunk.text}
            first = False
            return sse({**head, "choices": [{**choice, "logprobs": None, "finish_reason": chunk.finish_reason}],
                        **extra})

        def closing(generation: Generation) -> list[bytes]:
            return [sse({**head, "choices": [], "usage": usage(generation)})] if include_usage else []

        def failure(message: str) -> bytes:
            return sse({"error": {"message": f"function {self.model.name!r}: {message}", "type": "server_error",
                                  "param": None, "code": None}})

        return event_stream(request, generation, render, closing, failure, terminator=DONE)


def install(app: FastAPI, model: FunctionModel | None = None) -> OpenAIRoutes:
    """Add the routes to KServe's app (before it starts; errors.install gives them their error shape);
    without ``model``, bind one to the routes returned before the server starts."""
    routes = OpenAIRoutes()
    if model is not None:
        routes.bind(model)
    app.add_api_route(f"{PREFIX}/chat/completions", routes.chat, methods=["POST"])
    app.add_api_route(f"{PREFIX}/completions", routes.completions, methods=["POST"])
    app.add_api_route(f"{PREFIX}/embeddings", routes.embeddings, methods=["POST"])
    app.add_api_route(f"{PREFIX}/models", routes.models, methods=["GET"])
    app.add_api_route(f"{PREFIX}/models/{{model}}", routes.model_card, methods=["GET"])
    return routes
