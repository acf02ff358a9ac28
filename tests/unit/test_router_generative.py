"""The router's generative routes, in process: the real app in front of a replica stand-in that speaks the
replica's side of the contract (OpenAI routes and V2 generate, token counts in headers and in the
stream's last comment). What a caller sees: OpenAI's error shape under /openai/v1, the model list per
key, a function that serves another task refused, streams passed through whole with their usage line,
token limits reserved and settled to the counts the replica reported, the ledger's tokens, and a stream
that stalls past idleTimeout ended with an error event.

Timing (first chunk before the last, the disconnect) needs real sockets on both sides: that is in
tests/integration/test_generative.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from fnserve.router.app import Services
from tests.conftest import free_port
from tests.unit.doubles import in_process
from tests.unit.test_manifest import with_change
from tests.unit.test_router_middlewares import run

PROMPT_TOKENS = 7


class GenerativeUpstream:
    """Answers like a text-generation replica: ``max_tokens`` words, one SSE event each when streamed,
    the token counts in ``x-fnserve-*`` headers and the stream's ``: fnserve-usage`` line. A prompt
    containing "stall" stops after its first event and never ends."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.stopping = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if request.path.endswith("/embeddings"):
            return web.json_response({"object": "list", "data": [{"object": "embedding", "index": 0,
                                                                   "embedding": [0.6, 0.8]}]},
                                     headers={"x-fnserve-prompt-tokens": "3", "x-fnserve-completion-tokens": "0"})
        tokens = body.get("max_tokens") or 4
        words = [f"w{i} " for i in range(tokens)]
        if not body.get("stream"):
            return web.json_response({"object": "chat.completion", "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "".join(words)}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens}},
                headers={"x-fnserve-prompt-tokens": str(PROMPT_TOKENS), "x-fnserve-completion-tokens": str(tokens)})
        response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                               "x-fnserve-prompt-tokens": str(PROMPT_TOKENS)})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for word in words:
            await response.write(b"data: %s\n\n" % json.dumps({"choices": [{"delta": {"content": word}}]}).encode())
            if "stall" in json.dumps(body):
                await self.stopping.wait()
                return response
        await response.write(b": fnserve-usage prompt_tokens=%d completion_tokens=%d\n\n" % (PROMPT_TOKENS, tokens))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.runner is not None
        self.stopping.set()
        await self.runner.cleanup()


def generator(name: str, **spec: Any) -> dict[str, Any]:
    data = with_change("metadata.name", name)
    data["spec"].update({"runtime": "transformers", "transformers": {"task": "text-generation", "maxNewTokens": 8,
                                                                     "maxLength": 512}}, **spec)
    return data


def embedder(name: str) -> dict[str, Any]:
    data = with_change("metadata.name", name)
    data["spec"].update({"runtime": "transformers", "transformers": {"task": "feature-extraction"}})
    return data


class Router:
    def __init__(self, client: httpx.AsyncClient, services: Services) -> None:
        self.client = client
        self.services = services
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    async def key(self, name: str, scopes: list[str], **limits: Any) -> None:
        record, token = await self.services.keys.create(name, "default", scopes, None, limits)
        self.tokens[name], self.ids[name] = token, record.id

    async def chat(self, key: str | None, **body: Any) -> httpx.Response:
        body = {"model": "teller", "messages": [{"role": "user", "content": "hi"}], **body}
        headers = {"Authorization": f"Bearer {self.tokens[key]}"} if key else {}
        return await self.client.post("/openai/v1/chat/completions", json=body, headers=headers)


@contextlib.asynccontextmanager
async def router(tmp_path: Path, **settings: Any) -> AsyncIterator[Router]:
    upstream = GenerativeUpstream()
    await upstream.start()
    functions = [generator("teller"), generator("quick", idleTimeout=1, timeout=5), embedder("vectors"),
                 with_change("metadata.name", "classic")]
    try:
        async with in_process(tmp_path, [upstream.url], functions, **settings) as (app, client):
            r = Router(client, app.state.services)
            await r.key("all", ["invoke:*"])
            await r.key("teller-only", ["invoke:teller"])
            yield r
    finally:
        await upstream.stop()


def scenario(tmp_path: Path, body: Any, **settings: Any) -> None:
    async def main() -> None:
        async with router(tmp_path, **settings) as r:
            await body(r)
    run(main())


def openai_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys(), response.text
    return error


def test_errors_under_openai_take_openai_shape(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        missing = await r.chat(None)
        assert missing.status_code == 401 and openai_error(missing)["type"] == "authentication_error"
        unknown = await r.chat("all", model="nope")
        assert unknown.status_code == 404 and openai_error(unknown)["code"] == "model_not_found"
        forbidden = await r.chat("teller-only", model="quick")
        assert forbidden.status_code == 403 and openai_error(forbidden)["type"] == "permission_error"
        bad = await r.client.post("/openai/v1/chat/completions", content=b"{not json",
                                  headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert bad.status_code == 400 and "not valid JSON" in openai_error(bad)["message"]
        no_model = await r.client.post("/openai/v1/completions", json={"prompt": "x"},
                                       headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert no_model.status_code == 400 and openai_error(no_model)["param"] == "model"
        route = await r.client.get("/openai/v1/nothing", headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert route.status_code == 404 and openai_error(route)["message"].startswith("no such route")
        # the V1 routes keep the platform's shape
        v1 = await r.client.post("/v1/models/nope:predict", json={})
        assert v1.status_code == 404 and isinstance(v1.json()["error"], str)

    scenario(tmp_path, body)


def test_a_function_of_another_task_is_refused_before_any_replica(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        embed = await r.client.post("/openai/v1/embeddings", json={"model": "teller", "input": "x"},
                                    headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert embed.status_code == 404 and "not feature-extraction" in openai_error(embed)["message"]
        chat = await r.chat("all", model="classic")
        assert chat.status_code == 404 and "onnx model, not text-generation" in openai_error(chat)["message"]
        generate = await r.client.post("/v2/models/vectors/generate", json={"text_input": "x"},
                                       headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert generate.status_code == 404 and "feature-extraction function" in generate.json()["error"]

    scenario(tmp_path, body)


def test_the_model_list_names_what_the_key_may_invoke(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        assert (await r.client.get("/openai/v1/models")).status_code == 401
        listed = await r.client.get("/openai/v1/models", headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert [m["id"] for m in listed.json()["data"]] == ["classic", "quick", "teller", "vectors"]
        narrow = await r.client.get("/openai/v1/models",
                                    headers={"Authorization": f"Bearer {r.tokens['teller-only']}"})
        assert narrow.json() == {"object": "list", "data": [
            {"id": "teller", "object": "model", "created": narrow.json()["data"][0]["created"], "owned_by": "fnserve",
             "task": "text-generation"}]}

    scenario(tmp_path, body)


def test_a_stream_passes_whole_and_its_tokens_reach_the_ledger(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        streamed = await r.chat("all", stream=True, max_tokens=5)
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in streamed.headers
        events = [line for line in streamed.text.split("\n\n") if line]
        assert len(events) == 5 + 2 and events[-2].startswith(": fnserve-usage") and events[-1] == "data: [DONE]"
        whole = await r.chat("all", max_tokens=3)
        assert whole.json()["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 3}
        embedded = await r.client.post("/openai/v1/embeddings", json={"model": "vectors", "input": "x"},
                                       headers={"Authorization": f"Bearer {r.tokens['all']}"})
        assert embedded.status_code == 200
        rows = await r.services.accounting.usage(r.ids["all"], None, None)
        by_function = {row["function"]: row for row in rows}
        assert by_function["teller"]["requests"] == 2
        assert by_function["teller"]["promptTokens"] == 2 * PROMPT_TOKENS
        assert by_function["teller"]["completionTokens"] == 5 + 3
        assert (by_function["vectors"]["promptTokens"], by_function["vectors"]["completionTokens"]) == (3, 0)
        metrics = (await r.client.get("/metrics", headers={"Authorization": f"Bearer {r.tokens['admin']}"})).text
        assert 'fnserve_tokens_total{function="teller",kind="completion"} 8.0' in metrics
        assert 'fnserve_time_to_first_token_seconds_count{function="teller"} 1.0' in metrics

    async def with_admin(r: Router) -> None:
        await r.key("admin", ["admin"])
        await body(r)

    scenario(tmp_path, with_admin)


def test_token_limits_reserve_max_tokens_and_settle_to_what_was_used(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        # 100 tokens a minute: a request reserves its max_tokens (8 by default) and is settled to 7 + n
        await r.key("metered", ["invoke:*"], tpm=100)
        first = await r.chat("metered", max_tokens=40)
        assert first.status_code == 200
        assert '"tokens";q=100;w=60' in first.headers["ratelimit-policy"]
        # reserved 40 → r = 60 left then; settled to 47 used: 53 left, so a reservation of 50 fits, of 60 not
        second = await r.chat("metered", max_tokens=60)
        assert second.status_code == 429, second.text
        error = openai_error(second)
        assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded" and error["limit"] == "tpm"
        assert int(second.headers["retry-after"]) >= 1
        assert '"tokens";q=100;w=60' in second.headers["ratelimit-policy"]
        assert (await r.chat("metered", max_tokens=40)).status_code == 200  # 53 - 40 reserved
        too_big = await r.chat("metered", max_tokens=101)
        assert too_big.status_code == 400 and openai_error(too_big)["param"] == "max_tokens"
        # daily: 20 tokens; one request of 7 + 8 passes, the next cannot reserve 8 more
        await r.key("daily", ["invoke:*"], tpd=20)
        assert (await r.chat("daily", max_tokens=8)).status_code == 200
        refused = await r.chat("daily", max_tokens=8)
        assert refused.status_code == 429 and openai_error(refused)["limit"] == "tpd"
        assert '"tokens-daily";q=20;w=86400' in refused.headers["ratelimit-policy"]
        assert abs(int(refused.headers["retry-after"]) - (86400 - time.time() % 86400)) <= 2

    scenario(tmp_path, body)


def test_a_stream_that_stalls_past_idle_timeout_ends_with_an_error_event(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        started = time.monotonic()
        streamed = await r.chat("all", model="quick", stream=True,
                                messages=[{"role": "user", "content": "stall"}])
        assert streamed.status_code == 200  # the head was out before the pause
        assert 1 <= time.monotonic() - started < 4
        events = [e for e in streamed.text.split("\n\n") if e]
        assert events[0].startswith("data: {\"choices\"")
        last = json.loads(events[-1].removeprefix("data: "))
        assert last["error"]["type"] == "server_error" and "idleTimeout (1 s)" in last["error"]["message"]
        rows = await r.services.accounting.usage(r.ids["all"], "quick", None)
        assert rows[0]["serverErrors"] == 1 and rows[0]["completionTokens"] == 1  # charged for what it sent

    scenario(tmp_path, body)
