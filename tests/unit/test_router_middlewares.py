"""The router's request path, in process: the real app from create_app, driven over ASGI, in front of a
real upstream (an aiohttp server on 127.0.0.1) handed out by a Serving double.

What a caller sees of each middleware: auth (401 with a challenge, 403 without the scope, the admin API
for admin keys only, public functions open, an unknown function 404 rather than 401), admission (429
naming the limit and the key, with Retry-After; RateLimit headers on the answers that pass), accounting
(each invocation counted once, in the usage ledger and the Prometheus metrics), request ids, and the
versioned V2 routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web
from starlette.applications import Starlette

import fnserve
from fnserve.router.app import Services
from tests.conftest import free_port
from tests.unit.doubles import in_process
from tests.unit.test_manifest import with_change

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Upstream:
    """A replica stand-in: answers every POST with what it received and every GET as model metadata.
    A body containing "wait" is held until ``gate`` is set (``arrived`` says it got there)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (method, path, x-request-id)
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("x-request-id", "")))
        if request.method == "GET":
            return web.json_response({"name": request.path.rsplit("/", 1)[-1], "ready": True})
        body = await request.read()
        if b"wait" in body:
            self.arrived.set()
            await self.gate.wait()
        return web.json_response({"predictions": ["ok"], "path": request.path})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def function(name: str, *, public: bool = False, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    data = with_change("metadata.name", name)
    data["spec"]["auth"] = {"public": public}
    if limits is not None:
        data["spec"]["limits"] = limits
    return data


FUNCTIONS = [function("sentiment"), function("open", public=True),
             function("limited", limits={"rps": 0.01, "burst": 2})]


class Router:
    """The app, a client for it, its services, and the keys the tests call with."""

    def __init__(self, app: Starlette, client: httpx.AsyncClient, upstream: Upstream) -> None:
        self.app = app
        self.client = client
        self.upstream = upstream
        self.services: Services = app.state.services
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    async def key(self, name: str, scopes: list[str], **limits: Any) -> str:
        record, token = await self.services.keys.create(name, "default", scopes, None, limits)
        self.tokens[name], self.ids[name] = token, record.id
        return token

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    async def predict(self, function: str, key: str | None = None, body: Any = None,
                      **headers: str) -> httpx.Response:
        return await self.client.post(f"/v1/models/{function}:predict", json=body or {"instances": ["x"]},
                                      headers={**(self.auth(key) if key else {}), **headers})


@contextlib.asynccontextmanager
async def router(tmp_path: Path, refused: list[str] | None = None, **settings: Any) -> AsyncIterator[Router]:
    upstream = Upstream()
    await upstream.start()
    try:
        async with in_process(tmp_path, [*(refused or []), upstream.url], FUNCTIONS, **settings) as (app, client):
            r = Router(app, client, upstream)
            await r.key("admin", ["admin"])
            await r.key("invoker", ["invoke:*"])
            await r.key("narrow", ["invoke:sentiment"])
            yield r
    finally:
        await upstream.stop()


def scenario(tmp_path: Path, body: Any, **settings: Any) -> None:
    """Run ``body(router)`` against a fresh router."""
    async def main() -> None:
        async with router(tmp_path, **settings) as r:
            await body(r)
    run(main())


# -- auth -------------------------------------------------------------------------------------------

def test_no_key_is_401_with_a_bearer_challenge(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        response = await r.predict("sentiment")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="fnserve"'
        assert response.json()["error"].startswith("an API key is required")
        assert "keyId" not in response.json()
        assert r.upstream.seen == []

    scenario(tmp_path, body)


def test_a_bad_key_is_401_invalid_token_naming_the_key(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        bad = f"fns_{r.ids['invoker']}_{'0' * 40}"
        response = await r.client.post("/v1/models/sentiment:predict", json={},
                                        headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="fnserve", error="invalid_token"'
        assert response.json()["keyId"] == r.ids["invoker"]
        assert "0" * 40 not in response.text
        malformed = await r.client.post("/v1/models/sentiment:predict", json={}, headers={"X-API-Key": "nope"})
        assert malformed.status_code == 401 and "malformed API key" in malformed.json()["error"]
        assert r.upstream.seen == []

    scenario(tmp_path, body)


def test_a_key_invokes_only_the_functions_its_scopes_name(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        assert (await r.predict("sentiment", "narrow")).status_code == 200
        refused = await r.predict("limited", "narrow")
        assert refused.status_code == 403
        assert refused.json()["error"] == (f"API key {r.ids['narrow']} may not invoke 'limited' "
                                           f"(scopes: invoke:sentiment)")
        assert refused.json()["keyId"] == r.ids["narrow"]
        assert "www-authenticate" not in refused.headers
        admin_only = await r.predict("sentiment", "admin")  # 'admin' alone does not invoke
        assert admin_only.status_code == 403
        by_header = await r.predict("sentiment", **{"X-API-Key": r.tokens["invoker"]})
        assert by_header.status_code == 200 and by_header.json()["predictions"] == ["ok"]

    scenario(tmp_path, body)


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/keys"), ("GET", "/api/usage"), ("GET", "/api/tenants"),
                                              ("GET", "/api/nothing-here")])
def test_the_admin_api_needs_the_admin_scope(tmp_path: Path, method: str, path: str) -> None:
    async def body(r: Router) -> None:
        anonymous = await r.client.request(method, path)
        assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
        invoker = await r.client.request(method, path, headers=r.auth("invoker"))
        assert invoker.status_code == 403
        assert invoker.json()["error"] == f"API key {r.ids['invoker']} has no 'admin' scope"
        admin = await r.client.request(method, path, headers=r.auth("admin"))
        assert admin.status_code == (404 if path == "/api/nothing-here" else 200)

    scenario(tmp_path, body)


def test_metrics_need_the_metrics_scope_which_opens_nothing_else(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        created = await r.client.post("/api/keys", json={"name": "prometheus", "scopes": ["metrics"]},
                                      headers=r.auth("admin"))
        assert created.status_code == 201 and created.json()["key"]["scopes"] == ["metrics"]
        prometheus = r.tokens["prometheus"] = created.json()["token"]
        r.ids["prometheus"] = created.json()["key"]["id"]
        assert (await r.client.get("/metrics")).status_code == 401
        invoker = await r.client.get("/metrics", headers=r.auth("invoker"))
        assert invoker.status_code == 403
        assert invoker.json()["error"] == f"API key {r.ids['invoker']} has no 'metrics' scope"
        for token in (prometheus, r.tokens["admin"]):
            scraped = await r.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert scraped.status_code == 200 and scraped.text.startswith("# HELP")
        admin_api = await r.client.get("/api/keys", headers=r.auth("prometheus"))
        assert admin_api.status_code == 403
        assert admin_api.json()["error"] == f"API key {r.ids['prometheus']} has no 'admin' scope"
        assert (await r.predict("sentiment", "prometheus")).status_code == 403
        assert (await r.client.post("/metrics", headers=r.auth("prometheus"))).status_code == 405

    scenario(tmp_path, body)


def test_a_public_function_and_the_health_routes_need_no_key(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        assert (await r.predict("open")).status_code == 200
        assert (await r.client.get("/v1/models/open")).json() == {"name": "open", "ready": True}
        for path in ("/v2/health/live", "/v2/health/ready", "/openapi.json"):
            assert (await r.client.get(path)).status_code == 200, path

    scenario(tmp_path, body)


def test_an_unknown_function_is_404_not_401(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        for response in (await r.predict("nope"), await r.client.get("/v2/models/nope/ready"),
                         await r.client.post("/v2/models/nope/infer", json={})):
            assert response.status_code == 404
            assert response.json()["error"] == "function 'nope' not found"
        assert r.upstream.seen == []

    scenario(tmp_path, body)


def test_a_path_under_a_private_function_that_no_route_matches_still_needs_its_key(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        assert (await r.client.get("/v1/models/sentiment/extra")).status_code == 401
        assert (await r.client.put("/v1/models/sentiment:predict")).status_code == 401  # a wrong method
        missing = await r.client.get("/v1/models/sentiment/extra", headers=r.auth("invoker"))
        assert missing.status_code == 404
        assert missing.json()["error"] == "no such route: GET /v1/models/sentiment/extra"
        wrong = await r.client.put("/v1/models/sentiment:predict", headers=r.auth("invoker"))
        assert wrong.status_code == 405
        assert wrong.json()["error"] == "method not allowed: PUT /v1/models/sentiment:predict"

    scenario(tmp_path, body)


def test_a_405_names_every_method_the_path_takes(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        keys = await r.client.put("/api/keys", headers=r.auth("admin"))  # two routes: GET and POST
        assert keys.status_code == 405 and keys.headers["allow"] == "GET, HEAD, POST"
        wrong = await r.client.put("/v1/models/sentiment:predict", headers=r.auth("invoker"))
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, POST"  # also /v1/models/{name}

    scenario(tmp_path, body)


def test_a_revoked_key_is_refused_on_the_next_request(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        assert (await r.predict("sentiment", "invoker")).status_code == 200
        revoked = await r.client.delete(f"/api/keys/{r.ids['invoker']}", headers=r.auth("admin"))
        assert revoked.status_code == 200
        after = await r.predict("sentiment", "invoker")
        assert after.status_code == 401 and "was revoked" in after.json()["error"]

    scenario(tmp_path, body)


# -- admission --------------------------------------------------------------------------------------

def test_a_rate_limited_function_answers_429_with_retry_after_and_ratelimit_headers(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        first, second, third = [await r.predict("limited", "invoker") for _ in range(3)]
        assert [first.status_code, second.status_code] == [200, 200]
        assert first.headers["x-ratelimit-remaining"] == "1" and second.headers["x-ratelimit-remaining"] == "0"
        assert first.headers["ratelimit-policy"] == '"default";q=2;w=200'
        assert third.status_code == 429
        assert third.headers["retry-after"] == "100"
        assert third.headers["x-ratelimit-remaining"] == "0"
        error = third.json()
        assert error["limit"] == "rate" and error["keyId"] == r.ids["invoker"]
        assert error["error"] == (f"rate limit reached for API key {r.ids['invoker']}: 0.01 requests/s with "
                                  f"bursts of 2")
        assert error["requestId"] == third.headers["x-request-id"]
        assert len(r.upstream.seen) == 2  # the refused call never reached the replica
        await r.key("second", ["invoke:*"])
        assert (await r.predict("limited", "second")).status_code == 200  # counted per key × function
        assert (await r.predict("sentiment", "invoker")).status_code == 200

    scenario(tmp_path, body)


def test_public_callers_are_limited_per_address(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        codes = [(await r.predict("open")).status_code for _ in range(2)]
        assert codes == [200, 429]
        refused = await r.predict("open")
        assert refused.json()["error"].startswith("rate limit reached for client 10.1.2.3:")
        assert "keyId" not in refused.json()

    scenario(tmp_path, body, default_rps=0.01, default_burst=1)


def test_a_concurrency_slot_is_given_back_when_the_request_ends(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        await r.key("single", ["invoke:*"], concurrency=1)
        slow = asyncio.ensure_future(r.predict("sentiment", "single", {"instances": ["wait"]}))
        await asyncio.wait_for(r.upstream.arrived.wait(), 10)
        refused = await r.predict("sentiment", "single")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["limit"] == "concurrency" and refused.json()["keyId"] == r.ids["single"]
        assert (await r.predict("sentiment", "invoker")).status_code == 200  # other keys are not held up
        r.upstream.gate.set()
        assert (await slow).status_code == 200
        assert [(await r.predict("sentiment", "single")).status_code for _ in range(2)] == [200, 200]

    scenario(tmp_path, body)


def test_the_default_daily_quota_refuses_until_midnight(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        codes = [(await r.predict("sentiment", "invoker")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = await r.predict("sentiment", "invoker")
        assert refused.json()["limit"] == "daily"
        to_midnight = 86400 - time.time() % 86400
        assert abs(int(refused.headers["retry-after"]) - to_midnight) <= 2
        assert (await r.predict("sentiment", "narrow")).status_code == 200  # per key

    scenario(tmp_path, body, default_daily=2)


# -- accounting -------------------------------------------------------------------------------------

def _metric(text: str, function: str, code: str) -> float | None:
    match = re.search(rf'^fnserve_requests_total{{code="{code}",function="{function}",revision="1"}} (\S+)$', text,
                      re.M)
    return float(match.group(1)) if match else None


def test_each_invocation_is_counted_once_in_the_ledger_and_the_metrics(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        codes = [(await r.predict("sentiment", "invoker")).status_code for _ in range(3)]
        codes.append((await r.client.post("/v2/models/sentiment/versions/7/infer", json={},
                                          headers=r.auth("invoker"))).status_code)
        codes += [(await r.predict("limited", "invoker")).status_code for _ in range(3)]
        assert codes == [200, 200, 200, 404, 200, 200, 429]
        assert (await r.predict("sentiment")).status_code == 401  # never admitted: not counted
        assert (await r.predict("nope", "invoker")).status_code == 404  # no function: not counted
        usage = await r.services.accounting.usage(r.ids["invoker"], None, None)
        summary = {row["function"]: (row["requests"], row["clientErrors"], row["serverErrors"]) for row in usage}
        assert summary == {"sentiment": (4, 1, 0), "limited": (3, 1, 0)}
        scraped = await r.client.get("/metrics", headers=r.auth("admin"))
        assert scraped.status_code == 200
        assert _metric(scraped.text, "sentiment", "200") == 3
        assert _metric(scraped.text, "sentiment", "404") == 1
        assert _metric(scraped.text, "limited", "429") == 1
        assert _metric(scraped.text, "nope", "404") is None
        assert "fnserve_request_duration_seconds_count{function=\"sentiment\",revision=\"1\"} 4.0" in scraped.text
        ledger = await r.client.get("/api/usage", params={"key": r.ids["invoker"], "function": "limited"},
                                    headers=r.auth("admin"))
        assert [row["requests"] for row in ledger.json()["usage"]] == [3]

    scenario(tmp_path, body)


def test_a_request_retried_on_another_replica_is_counted_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with router(tmp_path, refused=[f"http://127.0.0.1:{free_port()}"]) as r:
            response = await r.predict("open")
            assert response.status_code == 200
            assert [row["requests"] for row in await r.services.accounting.usage("public", "open", None)] == [1]
            assert _metric((await r.client.get("/metrics", headers=r.auth("admin"))).text, "open", "200") == 1
            assert len(r.upstream.seen) == 1

    run(main())


# -- request ids and versions -----------------------------------------------------------------------

def test_the_request_id_is_kept_echoed_and_forwarded(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        given = await r.predict("sentiment", "invoker", **{"X-Request-ID": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        assert r.upstream.seen[-1] == ("POST", "/v1/models/sentiment:predict", "trace-42")
        refused = await r.predict("sentiment", **{"X-Request-ID": "trace-43"})
        assert refused.headers["x-request-id"] == "trace-43" and refused.json()["requestId"] == "trace-43"
        made = [await r.predict("sentiment", "invoker") for _ in range(2)]
        ids = [m.headers["x-request-id"] for m in made]
        assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
        assert [seen[2] for seen in r.upstream.seen[-2:]] == ids
        admin = await r.client.get("/api/keys", headers={**r.auth("admin"), "X-Request-ID": "trace-44"})
        assert admin.headers["x-request-id"] == "trace-44"

    scenario(tmp_path, body)


def test_a_version_route_answers_for_the_serving_revision_only(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        infer = await r.client.post("/v2/models/sentiment/versions/1/infer", json={"inputs": []},
                                    headers=r.auth("invoker"))
        assert infer.status_code == 200 and infer.json()["path"] == "/v2/models/sentiment/infer"
        meta = await r.client.get("/v2/models/sentiment/versions/1", headers=r.auth("invoker"))
        assert meta.status_code == 200 and r.upstream.seen[-1][1] == "/v2/models/sentiment"
        ready = await r.client.get("/v2/models/sentiment/versions/1/ready", headers=r.auth("invoker"))
        assert ready.status_code == 200 and r.upstream.seen[-1][1] == "/v2/models/sentiment/ready"
        seen = len(r.upstream.seen)
        other = await r.client.post("/v2/models/sentiment/versions/2/infer", json={"inputs": []},
                                    headers=r.auth("invoker"))
        assert other.status_code == 404 and other.headers["content-type"] == "application/json"
        assert other.json()["error"] == "function 'sentiment' has no version '2' serving (version 1 is current)"
        assert other.json()["requestId"] == other.headers["x-request-id"]
        assert len(r.upstream.seen) == seen
        anonymous = await r.client.post("/v2/models/sentiment/versions/2/infer", json={})
        assert anonymous.status_code == 401  # a version of a private function needs its key too

    scenario(tmp_path, body)


def test_the_v1_model_list_and_the_v2_server_metadata(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        anonymous = await r.client.get("/v1/models")
        assert anonymous.status_code == 200 and anonymous.json() == {"models": ["open"]}  # the public ones
        narrow = await r.client.get("/v1/models", headers=r.auth("narrow"))
        assert narrow.json() == {"models": ["open", "sentiment"]}
        everything = await r.client.get("/v1/models", headers=r.auth("invoker"))
        assert everything.json() == {"models": ["limited", "open", "sentiment"]}
        bad = await r.client.get("/v1/models", headers={"Authorization": "Bearer fns_nope_nope"})
        assert bad.status_code == 401 and "error" in bad.json()  # a key sent is checked
        metadata = await r.client.get("/v2")
        assert metadata.status_code == 200
        assert metadata.json() == {"name": "fnserve", "version": fnserve.__version__, "extensions": ["generate"]}
        assert (await r.client.post("/v2", json={})).status_code == 405

    scenario(tmp_path, body)
