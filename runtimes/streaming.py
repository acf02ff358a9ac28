"""A Generation as an HTTP answer: whole, or streamed as server-sent events, with the token-usage contract.

Both the OpenAI routes and the generate extension answer through here, so the router's contract
(fnserve/replica_contract.py) holds for all of them the same way:

- every answer carries ``x-fnserve-prompt-tokens``; a whole answer also ``x-fnserve-completion-tokens``;
- a stream that ends normally writes ``: fnserve-usage prompt_tokens=N completion_tokens=M`` as its last
  event before the route's own terminator (``data: [DONE]`` for OpenAI's, none for generate_stream).

A stream is Starlette's ``StreamingResponse`` (chunked, one ``send`` per event, nothing buffered). A
client that goes away cancels the generation: a watcher task waits for the ASGI ``http.disconnect``
(on its own, so it also notices while the stream waits for the next token), and the stream's cleanup
cancels too. The generation thread then stops before its next step and logs ``client went away``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive

from fnserve.replica_contract import COMPLETION_TOKENS_HEADER, PROMPT_TOKENS_HEADER, usage_comment
from runtimes.generation import Chunk, Generation, GenerationFailed

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse(data: Any) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def token_headers(prompt_tokens: int, completion_tokens: int | None = None) -> dict[str, str]:
    """The usage headers of an answer (completion tokens only when the answer is whole)."""
    headers = {PROMPT_TOKENS_HEADER: str(prompt_tokens)}
    if completion_tokens is not None:
        headers[COMPLETION_TOKENS_HEADER] = str(completion_tokens)
    return headers


async def _cancel_on_disconnect(receive: Receive, generation: Generation) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    generation.cancel()


async def whole_text(request: Request, generation: Generation) -> str:
    """The complete text of an answer that is not streamed; the client going away meanwhile cancels it.
    Call after the request body has been read."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, generation))
    try:
        return await generation.text()
    finally:
        watcher.cancel()


def event_stream(request: Request, generation: Generation, render: Callable[[Chunk], bytes],
                 closing: Callable[[Generation], Iterable[bytes]] = lambda _: (),
                 failure: Callable[[str], bytes] = lambda message: sse({"error": message}),
                 terminator: bytes = b"") -> StreamingResponse:
    """Stream a generation: ``render`` turns each chunk into its event; when the generation ends normally,
    the ``closing`` events (a usage chunk), the usage comment and ``terminator`` follow. A generation
    that fails midway ends the stream with the ``failure`` event and the usage comment."""

    # watching from now, not from the first event: a client gone before Starlette starts the body never
    # starts it, and its generation must stop all the same
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, generation))

    async def events() -> AsyncIterator[bytes]:
        try:
            try:
                async for chunk in generation:
                    yield render(chunk)
            except GenerationFailed as exc:
                yield failure(f"generation failed: {exc}")
                yield usage_comment(generation.prompt_tokens, generation.completion_tokens)
                return
            if generation.finish_reason is None:  # cancelled: nobody is listening any more
                return
            for event in closing(generation):
                yield event
            yield usage_comment(generation.prompt_tokens, generation.completion_tokens)
            if terminator:
                yield terminator
        finally:
            watcher.cancel()
            if not generation.ended:
                generation.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **token_headers(generation.prompt_tokens)})
