"""POST /api/functions with `Accept: application/x-ndjson`, in process on the real app: the deploy's phases
as they begin, then the same outcome (status, body) as the plain JSON answer — success or error —, empty
keep-alive lines while the backend takes its time, and the audit log kept as before."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fnserve.router.admin import functions as admin_functions
from tests.unit.doubles import ScriptedServing, in_process
from tests.unit.test_manifest import VALID, with_change

NDJSON = {"Accept": "application/x-ndjson"}


def folder(tmp_path: Path) -> Path:
    fn = tmp_path / "fn"
    (fn / "model").mkdir(parents=True)
    (fn / "model" / "model.onnx").write_bytes(b"weights")
    (fn / "handler.py").write_text("class SentimentHandler: ...\n")
    (fn / "function.yaml").write_text(yaml.safe_dump(VALID))
    return fn


def events(response: httpx.Response) -> list[Any]:
    """The stream's lines: events as dicts, keep-alives as ''."""
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) if line else "" for line in response.text.splitlines()]


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "requestId"}


def deploy_all(tmp_path: Path, bodies: list[dict[str, Any]], headers: list[dict[str, str]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with in_process(tmp_path / "state", ["http://127.0.0.1:1"], []) as (app, client):
            _, token = await app.state.services.keys.create("admin", "default", ["admin"], None, {})
            answers = [await client.post("/api/functions", json=body, headers={"Authorization": f"Bearer {token}",
                                                                               **extra})
                       for body, extra in zip(bodies, headers, strict=True)]
            audit = await client.get("/api/audit", headers={"Authorization": f"Bearer {token}"})
            return [*answers, audit]
    return asyncio.run(main())


def test_a_streamed_deploy_reports_its_phases_then_the_plain_answer(tmp_path: Path) -> None:
    body = {"manifest": VALID, "sourceDir": str(folder(tmp_path)), "source": "fn/function.yaml"}
    first, plain, again, audit = deploy_all(tmp_path, [body] * 3, [NDJSON, {}, NDJSON])
    streamed = events(first)
    assert [e["phase"] for e in streamed] == ["validating", "pinning", "starting", "ready"]
    assert streamed[1] == {"phase": "pinning", "model": "./model"}
    assert streamed[2] == {"phase": "starting", "revision": 1, "model": "./model"}  # a folder is its own pin
    assert streamed[3]["status"] == 201 and streamed[3]["result"]["revision"] == 1
    assert plain.status_code == 200 and set(plain.json()) == set(streamed[3]["result"])  # the same answer
    assert first.status_code == 200 and events(again)[-1]["status"] == 200  # 200: the function existed
    assert [(e["action"], e["outcome"]) for e in audit.json()["entries"]][-3:] == [("function.deploy", "ok")] * 3


def test_a_refused_deploy_ends_its_stream_with_the_plain_error(tmp_path: Path) -> None:
    fn = folder(tmp_path)
    bad = {"manifest": with_change("spec.runtime", "tensorflow"), "sourceDir": str(fn)}
    no_handler = {"manifest": with_change("spec.handler", "missing:Handler"), "sourceDir": str(fn)}
    streamed, plain, streamed_later, plain_later, _ = deploy_all(tmp_path, [bad, bad, no_handler, no_handler],
                                                                 [NDJSON, {}, NDJSON, {}])
    for stream, answer in ((streamed, plain), (streamed_later, plain_later)):
        *phases, last = events(stream)
        assert [e["phase"] for e in phases] == ["validating"] and answer.status_code == 400
        assert last["status"] == 400 and without_request_id(last) == {**without_request_id(answer.json()), "status": 400}
    assert events(streamed)[-1]["problems"][0]["path"] == "spec.runtime"


def test_a_slow_start_keeps_the_stream_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow_apply(self: ScriptedServing, revision: Any, *, verify: bool = True, canary: int = 0) -> None:
        await asyncio.sleep(0.35)

    monkeypatch.setattr(ScriptedServing, "apply", slow_apply)
    monkeypatch.setattr(admin_functions, "KEEPALIVE", 0.1)
    body = {"manifest": VALID, "sourceDir": str(folder(tmp_path))}
    streamed = events(deploy_all(tmp_path, [body], [NDJSON])[0])
    starting = next(i for i, e in enumerate(streamed) if e and e["phase"] == "starting")
    assert streamed[starting + 1:starting + 3] == ["", ""] and streamed[-1]["phase"] == "ready"
