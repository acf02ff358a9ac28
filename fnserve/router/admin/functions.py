"""/api/functions: deploy, list, inspect, revisions, rollback, delete, logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from fnserve.backends.base import FunctionStatus
from fnserve.records import Revision
from fnserve.router.admin import LargeJSONResponse, actor_of, bounded_int
from fnserve.router.admin.bodies import Deploy, FunctionSource, Rollback, with_body
from fnserve.router.errors import BadRequest
from fnserve.router.generative import invoke_path, task_of
from fnserve.router.live_stats import INTERVAL
from fnserve.router.services.accounting import AccountingService
from fnserve.router.services.catalog import MAX_EXAMPLES, Catalog, as_chat
from fnserve.router.services.functions import FunctionService, Progress
from fnserve.settings import Settings
from fnserve.storage import ArtifactError
from fnserve.storage.models import unpack_upload

NDJSON = "application/x-ndjson"
KEEPALIVE = 10.0
"""Seconds between the empty lines of a quiet deploy stream (well under any proxy's idle timeout)."""


async def source_dir(settings: Settings, body: FunctionSource) -> str:
    """The folder a manifest's code is in: ``sourceDir`` as given, or ``files`` unpacked here."""
    if body.files is None:
        return body.source_dir or ""
    try:
        folder = await asyncio.to_thread(unpack_upload, body.files, settings.state_dir / "uploads")
    except ArtifactError as exc:
        raise BadRequest(str(exc)) from None
    return str(folder)


async def _error_event(request: Request, exc: Exception) -> dict[str, Any]:
    """The error answer the app's exception handlers give ``exc``, as a progress event with its status."""
    handlers = request.app.exception_handlers
    handler = next(handlers[kind] for kind in type(exc).__mro__ if kind in handlers)  # Exception is one
    response = await handler(request, exc)
    return {**json.loads(response.body), "status": response.status_code}


class FunctionRoutes:
    def __init__(self, functions: FunctionService, accounting: AccountingService, catalog: Catalog,
                 settings: Settings) -> None:
        self.functions = functions
        self.accounting = accounting
        self.catalog = catalog
        self.settings = settings
        self._fixed: dict[tuple[str, int, float], dict[str, Any]] = {}
        self._deploying: set[asyncio.Future[None]] = set()
        """Streamed deploys still running (held here so that none is collected mid-way)."""

    def brief(self, revision: Revision, status: FunctionStatus | None = None) -> dict[str, Any]:
        """What the functions list shows of one: revision, replicas had and wanted, requests in flight and
        queued, and this router's live numbers (router/live_stats.py) — what a console polling a thousand
        functions every two seconds needs, and no more."""
        key = (revision.name, revision.number, revision.created_at)  # a number is reused after `rm`
        fixed = self._fixed.get(key)
        if fixed is None:  # what never changes for a revision: made once, not on every poll
            if len(self._fixed) > 10_000:
                self._fixed.clear()
            fixed = self._fixed[key] = {
                "name": revision.name, "revision": revision.number, "runtime": revision.function.spec.runtime,
                "url": invoke_path(revision), "labels": revision.function.metadata.labels,
                "trainable": self.catalog.trainable(revision)}
        status = status or self.functions.status(key[0])
        if status is None:
            return {**fixed, "ready": False, "message": "not running", "actual": 0, "inFlight": 0, "desired": 0,
                    "queued": 0, "canaryRevision": None, "canaryPercent": 0, "stats": self.accounting.live.summary(key[0])}
        actual = in_flight = 0
        for replica in status.replicas:
            actual += replica.state == "ready"
            in_flight += replica.outstanding
        return {**fixed, "ready": status.ready, "message": status.message, "actual": actual, "inFlight": in_flight,
                "desired": status.desired or 0, "queued": status.queued, "canaryRevision": status.canary_revision,
                "canaryPercent": status.canary_percent, "stats": self.accounting.live.summary(key[0])}

    def summary(self, revision: Revision) -> dict[str, Any]:
        """The brief, with the replicas one by one, the traffic split and what the backend says."""
        status = self.functions.status(revision.name)
        shown = status.to_dict() if status is not None else {"ready": False, "replicas": [], "message": "not running"}
        return {**self.brief(revision, status), "createdAt": revision.created_at, "traffic": self._traffic(revision),
                **{k: v for k, v in shown.items() if k not in ("name", "revision")}}

    def _traffic(self, revision: Revision) -> list[dict[str, Any]]:
        """The split between the current revision and its canary, with what each served (this router's
        count since it started)."""
        canary, percent = self.functions.canaries.get(revision.name, (None, 0))
        current = self.functions.get(revision.name)
        if current is None or revision.number != current.number:
            return []
        shares = [(revision, 100 - percent, False)] + ([(canary, percent, True)] if canary is not None else [])
        return [{"revision": r.number, "percent": share, "canary": is_canary,
                 **self.accounting.revision_summary(r.name, r.number)} for r, share, is_canary in shares]

    async def list_functions(self, request: Request) -> Response:
        """All deployed functions with their current revision and replicas (?view=brief: the numbers the
        console's list shows, without replicas one by one or the traffic split)."""
        view = request.query_params.get("view", "full")
        if view not in ("full", "brief"):
            raise BadRequest(f"view must be full or brief (got {view!r})")
        describe = self.brief if view == "brief" else self.summary
        return LargeJSONResponse({"functions": [describe(r) for _, r in sorted(self.functions.table.items())]})

    @with_body(Deploy)
    async def deploy(self, request: Request, body: Deploy) -> Response:
        """Deploy a manifest as a new revision, or with {"canary": N} as a canary taking N% of the requests;
        answers once the revision serves (201 new, 200 updated). With `Accept: application/x-ndjson` the
        answer (200) is the deploy's progress, one JSON object per line as each phase begins —
        {"phase": "validating"}, {"phase": "pinning", "model"}, {"phase": "starting", "revision", "model"} —
        and last {"phase": "ready", "status": 201|200, "result": <the JSON answer>} or the JSON error
        answer with its "status"; an empty line every 10 s while nothing happens keeps the connection
        open, however long the backend takes to start the revision."""
        if NDJSON in request.headers.get("accept", ""):
            return StreamingResponse(self._deploy_events(request, body), media_type=NDJSON,
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # nginx
        revision, created = await self._deploy(request, body, None)
        return JSONResponse(self._deployed(revision), 201 if created else 200)

    async def _deploy(self, request: Request, body: Deploy, progress: Progress | None) -> tuple[Revision, bool]:
        return await self.functions.deploy(body.manifest, await source_dir(self.settings, body),
                                           body.source or "manifest", canary=body.canary or 0,
                                           actor=actor_of(request), progress=progress)

    def _deployed(self, revision: Revision) -> dict[str, Any]:
        current = self.functions.current(revision.name)  # a canary's function: its current revision serves too
        return {**self.summary(current), **revision.to_dict()}

    async def _deploy_events(self, request: Request, body: Deploy) -> AsyncIterator[bytes]:
        """The deploy runs as a task of its own, so a client that goes away mid-way cancels nothing (as
        with the plain answer); its events are written here as they come."""
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def progress(phase: str, detail: dict[str, Any]) -> None:
            events.put_nowait({"phase": phase, **detail})

        async def run() -> None:
            try:
                revision, created = await self._deploy(request, body, progress)
                events.put_nowait({"phase": "ready", "status": 201 if created else 200,
                                   "result": self._deployed(revision)})
            except Exception as exc:  # answered as the plain request would be: the app's handler for it
                events.put_nowait(await _error_event(request, exc))

        task = asyncio.ensure_future(run())
        self._deploying.add(task)
        task.add_done_callback(self._deploying.discard)
        while True:
            try:
                event = await asyncio.wait_for(events.get(), KEEPALIVE)
            except asyncio.TimeoutError:
                yield b"\n"
                continue
            yield json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"
            if event.get("phase") == "ready" or "error" in event:
                return

    async def get(self, request: Request) -> Response:
        """One function: its current revision, manifest and replicas."""
        revision = self.functions.current(request.path_params["name"])
        return JSONResponse({**revision.to_dict(), **self.summary(revision)})

    async def delete(self, request: Request) -> Response:
        """Stop a function's replicas and forget it."""
        await self.functions.remove(request.path_params["name"], actor_of(request))
        self.accounting.live.forget(request.path_params["name"])
        return JSONResponse({"deleted": request.path_params["name"]})

    async def logs(self, request: Request) -> Response:
        """The end of the function's replica logs (?tail=N lines per replica, default 100); ?follow=1 goes
        on streaming what the replicas write until the client leaves."""
        revision = self.functions.current(request.path_params["name"])
        tail = bounded_int(request, "tail", 100, 1, 10_000, " of lines")
        if request.query_params.get("follow", "") in ("1", "true", "yes"):
            return StreamingResponse(self.functions.follow_logs(revision.name, tail),
                                     media_type="text/plain; charset=utf-8",
                                     headers={"X-Accel-Buffering": "no"})  # each line as it comes, through nginx
        return PlainTextResponse(await self.functions.logs(revision.name, tail) + "\n")

    async def revisions(self, request: Request) -> Response:
        """Every revision of a function, oldest first, with the one serving marked."""
        current = self.functions.current(request.path_params["name"])
        revisions = await self.functions.revisions(current.name)
        runs = await self.catalog.runs(revisions)
        return JSONResponse({"name": current.name, "current": current.number,
                             "revisions": [{**r.to_dict(), "modelUri": r.function.spec.model.uri,
                                            "run": runs.get(r.number), "current": r.number == current.number}
                                           for r in revisions]})

    async def stats(self, request: Request) -> Response:
        """The last hour of a function in 10-second buckets (requests, server and client errors, p50 and
        p95 ms, cold starts; this router's), and its last cold starts split into queue wait, process
        start, model load and ready."""
        revision = self.functions.current(request.path_params["name"])
        status = self.functions.status(revision.name)
        return JSONResponse({"name": revision.name, "intervalSeconds": INTERVAL,
                             "buckets": self.accounting.live.series(revision.name),
                             "coldStarts": [c.to_dict() for c in status.cold_starts] if status is not None else []})

    async def example(self, request: Request) -> Response:
        """The function's example requests (its examples.jsonl; none: an empty list and a null body — a
        function without examples is no error), and the path to send them to."""
        revision = self.functions.current(request.path_params["name"])
        examples = await self.catalog.examples(revision)
        if task_of(revision) == "text-generation":  # it answers OpenAI's chat route only: each prompt as a chat
            examples = [as_chat(revision.name, text) for body in examples for text in body.get("instances", [])
                        if isinstance(text, str)][:MAX_EXAMPLES]
        return JSONResponse({"path": invoke_path(revision), "body": examples[0] if examples else None,
                             "examples": examples})

    @with_body(Rollback)
    async def rollback(self, request: Request, body: Rollback) -> Response:
        """Drop the function's canary, or serve an earlier revision again: {"to": N} (default: drop the
        canary if there is one, else the revision before the current); droppedCanary names a dropped one."""
        revision, dropped = await self.functions.rollback(request.path_params["name"], body.to, actor_of(request))
        return JSONResponse({**revision.to_dict(), **self.summary(revision),
                             "droppedCanary": dropped.number if dropped is not None else None})

    async def promote(self, request: Request) -> Response:
        """The canary becomes the current revision and takes every request."""
        revision = await self.functions.promote(request.path_params["name"], actor_of(request))
        return JSONResponse({**revision.to_dict(), **self.summary(revision)})

    def routes(self) -> list[Route]:
        return [
            Route("/api/functions", self.list_functions, methods=["GET"], name="list_functions"),
            Route("/api/functions", self.deploy, methods=["POST"], name="deploy_function"),
            Route("/api/functions/{name}", self.get, methods=["GET"], name="get_function"),
            Route("/api/functions/{name}", self.delete, methods=["DELETE"], name="delete_function"),
            Route("/api/functions/{name}/logs", self.logs, methods=["GET"], name="function_logs"),
            Route("/api/functions/{name}/revisions", self.revisions, methods=["GET"], name="list_revisions"),
            Route("/api/functions/{name}/stats", self.stats, methods=["GET"], name="function_stats"),
            Route("/api/functions/{name}/example", self.example, methods=["GET"], name="function_example"),
            Route("/api/functions/{name}/rollback", self.rollback, methods=["POST"], name="rollback_function"),
            Route("/api/functions/{name}/promote", self.promote, methods=["POST"], name="promote_function"),
        ]
