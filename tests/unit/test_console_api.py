"""What the console reads, in process: /api/me for any valid key, a key's quota bars, the functions
list's live numbers, a function's hour of 10-second buckets, example inputs, training from the console,
the console's own page and its headers; and the pure parts under them (LiveStats, the cold-start split).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

from fnserve.backends.local.tracks import cold_start_of
from fnserve.manifest import parse_function
from fnserve.records import Revision
from fnserve.replica_contract import StartupTimes
from fnserve.router.console import CONTENT_SECURITY_POLICY
from fnserve.router.live_stats import HISTORY, INTERVAL, LiveStats
from fnserve.router.services.catalog import Catalog
from fnserve.state import StateStore
from tests.unit.test_router_middlewares import Router, function, scenario


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- LiveStats -----------------------------------------------------------------------------------------

def test_live_stats_windows_count_the_last_minute_five_minutes_and_hour() -> None:
    clock = Clock(1_000_000.0)
    stats = LiveStats(clock)
    for _ in range(30):  # an hour ago and more: forgotten by every window
        stats.record("f", 200, 5, False)
    clock.now += 3600 + INTERVAL
    stats.record("f", 500, 40, True)
    clock.now += 200  # older than a minute, within five
    for ms in (10, 10, 10, 100):
        stats.record("f", 200, ms, False)
    summary = stats.summary("f")
    assert summary["rpm"] == 4
    assert summary["requests"] == 5 and summary["errors"] == 1 and summary["coldStarts"] == 1
    assert 9 <= summary["p50Ms"] <= 11 and 90 <= summary["p95Ms"] <= 110
    assert stats.summary("idle") == {"rpm": 0, "p50Ms": None, "p95Ms": None, "requests": 0, "errors": 0,
                                     "coldStarts": 0}


def test_requests_per_minute_slide_over_the_bucket_leaving_the_minute() -> None:
    clock = Clock(2_000_000.0)  # a bucket's start
    stats = LiveStats(clock)
    for _ in range(6):
        stats.record("f", 200, 5, False)
    clock.now += 60 + INTERVAL / 2  # that bucket is half out of the minute now
    assert stats.summary("f")["rpm"] == 3
    stats.record("f", 200, 5, False)
    assert stats.summary("f")["rpm"] == 4
    clock.now += INTERVAL
    assert stats.summary("f")["rpm"] == 1


def test_live_stats_series_is_an_hour_of_buckets_oldest_first_with_the_empty_ones() -> None:
    clock = Clock(1_000_005.0)
    stats = LiveStats(clock)
    stats.record("f", 200, 3, False)
    clock.now += 25
    stats.record("f", 404, 7, False)
    series = stats.series("f")
    assert len(series) == HISTORY
    assert [b["t"] for b in series] == sorted(b["t"] for b in series)
    assert series[-1]["t"] == 1_000_030 // INTERVAL * INTERVAL
    busy = [b for b in series if b["requests"]]
    assert [(b["requests"], b["clientErrors"]) for b in busy] == [(1, 0), (1, 1)]
    assert busy[1]["t"] - busy[0]["t"] == 30


def test_a_cold_start_is_split_by_the_replicas_own_phases_and_completed_by_its_server() -> None:
    replica = SimpleNamespace(launched_at=100.0, times=StartupTimes(100.1, 100.2, 100.5), ready_at=100.6,
                              serving_at=0.0, id="r-1", revision=SimpleNamespace(number=3))
    record = cold_start_of(replica, 900.0, now=100.8)  # type: ignore[arg-type]
    split = record.to_dict()
    assert split["revision"] == 3 and split["replica"] == "r-1" and split["totalMs"] == 900.0
    assert (split["forkMs"], split["importsMs"], split["loadMs"], split["readyMs"]) == (100.0, 100.0, 300.0, 100.0)
    assert split["queueMs"] == 300.0 and split["serverMs"] is None  # 100 ms before the launch, 200 ms after ready
    record.served(100.85)  # its server accepted 50 ms after the request was handed over
    assert record.to_dict()["serverMs"] == 50.0 and record.to_dict()["totalMs"] == 950.0
    late = cold_start_of(replica, 400.0, now=100.8).to_dict()  # type: ignore[arg-type]  # came at 100.4, mid-load
    assert (late["forkMs"], late["importsMs"], late["loadMs"], late["readyMs"], late["queueMs"]) == (
        0.0, 0.0, 100.0, 100.0, 200.0)
    unknown = cold_start_of(SimpleNamespace(launched_at=1.0, times=None, ready_at=2.0, serving_at=2.5,  # type: ignore[arg-type]
                                            id="r-2", revision=SimpleNamespace(number=1)), 50.0, now=3.0).to_dict()
    assert unknown["waitedMs"] == 50.0 and unknown["loadMs"] is None and unknown["queueMs"] is None


# -- /api/me and quotas ----------------------------------------------------------------------------------

def test_api_me_answers_any_valid_key_with_its_functions_quota_and_usage(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        await r.key("capped", ["invoke:sentiment"], daily=100, tpd=5000)
        for _ in range(3):
            assert (await r.predict("sentiment", "capped")).status_code == 200
        r.services.flush()  # the router's once-a-second flush: /api/me reads the ledger as of the last one
        me = await r.client.get("/api/me", headers=r.auth("capped"))
        assert me.status_code == 200, me.text
        data = me.json()
        assert data["admin"] is False and data["key"]["id"] == r.ids["capped"]
        assert [f["name"] for f in data["functions"]] == ["sentiment"]
        bars = {b["limit"]: b for b in data["quota"]["bars"]}
        assert bars["daily"] == {"limit": "daily", "function": None, "used": 3, "of": 100, "unit": "requests"}
        assert bars["tpd"]["of"] == 5000 and bars["tpd"]["unit"] == "tokens"
        assert sum(row["requests"] for row in data["usage"]) == 3
        assert r.tokens["capped"].rsplit("_", 1)[-1] not in json.dumps(data) and "hash" not in json.dumps(data).lower()
        admin = (await r.client.get("/api/me", headers=r.auth("admin"))).json()
        assert admin["admin"] is True and {f["name"] for f in admin["functions"]} == {"sentiment", "open", "limited"}
        assert (await r.client.get("/api/me")).status_code == 401
        assert (await r.client.get("/api/functions", headers=r.auth("capped"))).status_code == 403
        quota = await r.client.get(f"/api/keys/{r.ids['capped']}/quota", headers=r.auth("admin"))
        assert quota.status_code == 200 and {b["limit"]: b["used"] for b in quota.json()["bars"]}["daily"] == 3
        assert (await r.client.get(f"/api/keys/{r.ids['capped']}/quota", headers=r.auth("capped"))).status_code == 403
        missing = await r.client.get("/api/keys/nobody/quota", headers=r.auth("admin"))
        assert missing.status_code == 404 and "nobody" in missing.json()["error"]
    scenario(tmp_path, body)


def test_a_function_with_its_own_daily_limit_gets_a_bar_of_its_own(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        revision = Revision(parse_function(function("capped", limits={"daily": 7})), 1, tmp_path, tmp_path, time.time())
        r.services.functions.table["capped"] = revision
        assert (await r.predict("capped", "invoker")).status_code == 200
        me = (await r.client.get("/api/me", headers=r.auth("invoker"))).json()
        assert {"limit": "daily", "function": "capped", "used": 1, "of": 7, "unit": "requests"} in me["quota"]["bars"]
        narrow = (await r.client.get("/api/me", headers=r.auth("narrow"))).json()  # may not call it: no bar
        assert not any(b["function"] == "capped" for b in narrow["quota"]["bars"])
    scenario(tmp_path, body)


# -- the functions list and one function ---------------------------------------------------------------

def test_the_functions_list_carries_live_numbers(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        for _ in range(4):
            await r.predict("sentiment", "invoker")
        listed = {f["name"]: f for f in (await r.client.get("/api/functions", headers=r.auth("admin"))).json()["functions"]}
        stats = listed["sentiment"]["stats"]
        assert stats["rpm"] == 4 and stats["requests"] == 4 and stats["errors"] == 0
        assert stats["p50Ms"] is not None and stats["p95Ms"] >= stats["p50Ms"]
        assert listed["open"]["stats"]["rpm"] == 0 and listed["open"]["stats"]["p95Ms"] is None
        for field in ("actual", "inFlight", "desired", "queued", "labels", "trainable", "revision", "runtime"):
            assert field in listed["sentiment"], field
        brief = (await r.client.get("/api/functions?view=brief", headers=r.auth("admin"))).json()["functions"]
        assert [f["name"] for f in brief] == sorted(listed) and brief[-1]["stats"] == listed["sentiment"]["stats"]
        assert "replicas" not in brief[-1] and "traffic" not in brief[-1]
        wrong = await r.client.get("/api/functions?view=everything", headers=r.auth("admin"))
        assert wrong.status_code == 400 and "view" in wrong.json()["error"]
        series = (await r.client.get("/api/functions/sentiment/stats", headers=r.auth("admin"))).json()
        assert series["intervalSeconds"] == INTERVAL and len(series["buckets"]) == HISTORY
        assert sum(b["requests"] for b in series["buckets"]) == 4
        assert series["coldStarts"] == []
        gone = await r.client.get("/api/functions/nothing/stats", headers=r.auth("admin"))
        assert gone.status_code == 404
    scenario(tmp_path, body)


def test_example_inputs_come_from_the_revisions_examples_file(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        none = await r.client.get("/api/functions/sentiment/example", headers=r.auth("admin"))
        assert none.status_code == 200 and none.json()["examples"] == [] and none.json()["body"] is None
        source = r.services.functions.table["sentiment"].source_dir
        (source / "examples.jsonl").write_text('{"instances": ["one"]}\nnot json\n[1, 2]\n{"instances": [NaN]}\n'
                                               + "[" * 100_000 + '\n{"instances": ["two"]}\n')
        found = (await r.client.get("/api/functions/sentiment/example", headers=r.auth("admin"))).json()
        assert found == {"path": "/v1/models/sentiment:predict", "body": {"instances": ["one"]},
                         "examples": [{"instances": ["one"]}, {"instances": ["two"]}]}
        # a key that may invoke the function may see its examples and live numbers; one that may not, neither
        for path in ("/api/functions/sentiment/example", "/api/functions/sentiment/stats"):
            assert (await r.client.get(path, headers=r.auth("narrow"))).status_code == 200, path
            assert (await r.client.get(path)).status_code == 401, path
        await r.key("other", ["invoke:open"])
        refused = await r.client.get("/api/functions/sentiment/stats", headers=r.auth("other"))
        assert refused.status_code == 403 and "may not invoke 'sentiment'" in refused.json()["error"]
        assert (await r.client.get("/api/functions/sentiment", headers=r.auth("narrow"))).status_code == 403
        assert (await r.client.get("/api/functions/sentiment/logs", headers=r.auth("narrow"))).status_code == 403
    scenario(tmp_path, body)


def test_a_text_generators_examples_are_chat_requests_on_its_chat_route(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        data = function("writer")
        data["spec"]["runtime"], data["spec"]["transformers"] = "transformers", {"task": "text-generation"}
        revision = Revision(parse_function(data), 1, tmp_path / "writer", tmp_path, time.time())
        revision.source_dir.mkdir()
        (revision.source_dir / "examples.jsonl").write_text('{"instances": ["Once upon a time", 3]}\n')
        r.services.functions.table["writer"] = revision
        found = (await r.client.get("/api/functions/writer/example", headers=r.auth("admin"))).json()
        chat = {"model": "writer", "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 64}
        assert found == {"path": "/openai/v1/chat/completions", "body": chat, "examples": [chat]}
    scenario(tmp_path, body)


def test_a_runs_metrics_with_nan_are_shown_as_strings(tmp_path: Path) -> None:
    data = function("trained")
    data["spec"]["model"] = {"uri": "artifacts://trained/20261207-000000-000-abcd"}
    (tmp_path / "metrics.json").write_text('{"loss": NaN, "accuracy": 0.9}')
    revision = Revision(parse_function(data), 1, tmp_path, tmp_path, time.time())
    runs = asyncio.run(Catalog(StateStore(tmp_path / "state.db")).runs([revision]))
    assert runs == {1: {"id": "20261207-000000-000-abcd", "job": None, "metrics": {"loss": "nan", "accuracy": 0.9}}}
    json.dumps(runs, allow_nan=False)  # what the route answers with


def test_training_a_function_without_a_train_manifest_is_404(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        answer = await r.client.post("/api/functions/sentiment/train", headers=r.auth("admin"))
        assert answer.status_code == 404 and "train.yaml" in answer.json()["error"]
        (r.services.functions.table["open"].source_dir / "train.yaml").write_text("kind: [unclosed\n")
        broken = await r.client.post("/api/functions/open/train", headers=r.auth("admin"))
        assert broken.status_code == 400 and "invalid manifest" in broken.json()["error"]
        unknown = await r.client.post("/api/functions/nothing/train", headers=r.auth("admin"))
        assert unknown.status_code == 404
        assert (await r.client.post("/api/functions/sentiment/train", headers=r.auth("invoker"))).status_code == 403
    scenario(tmp_path, body)


# -- the console's page ----------------------------------------------------------------------------------

def test_the_console_is_served_with_a_strict_content_security_policy(tmp_path: Path) -> None:
    async def body(r: Router) -> None:
        home = await r.client.get("/")
        assert home.status_code == 302 and home.headers["location"].endswith("/console")
        page = await r.client.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
        assert "<script>" not in page.text and " style=" not in page.text  # nothing inline the policy would refuse
        again = await r.client.get("/console", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
        script = await r.client.get("/console/assets/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        for path in ("/console/assets/nothing.js", "/console/assets/../../pyproject.toml"):
            missing = await r.client.get(path)
            assert missing.status_code == 404 and "error" in missing.json(), path
        spec = (await r.client.get("/openapi.json")).json()
        assert not any(p == "/" or p.startswith("/console") for p in spec["paths"])
        assert "/api/me" in spec["paths"]
    scenario(tmp_path, body)


def test_the_page_preloads_every_module_it_loads() -> None:
    """Each module is fetched at once with the page (<link rel="modulepreload">), not level by level as
    imports are found: a module added without its preload would bring the waterfall back."""
    folder = Path(__file__).resolve().parents[2] / "fnserve" / "console"
    page = (folder / "index.html").read_text()
    for script in folder.rglob("*.js"):
        name = script.relative_to(folder).as_posix()
        if name != "app.js":
            assert f'<link rel="modulepreload" href="/console/assets/{name}">' in page, name


def test_no_console_script_writes_markup_from_strings() -> None:
    """Every name, label and log line reaches the page as text: no script builds markup from strings."""
    folder = Path(__file__).resolve().parents[2] / "fnserve" / "console"
    scripts = sorted(folder.rglob("*.js"))
    assert scripts, "the console has no scripts"
    for script in scripts:
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "setAttribute(\"style\"", "setAttribute('style'"):
            assert sink not in text, f"{script.name} uses {sink}"


