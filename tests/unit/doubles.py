"""Backend doubles for running the real router app in-process: a Serving side that hands out given
replica addresses, and a Training side for tests that submit no jobs; ``in_process`` runs the app with
them, its functions in the table, behind an httpx client."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from fnserve.backends.base import Endpoint, FunctionStatus
from fnserve.manifest import parse_function
from fnserve.records import Revision
from fnserve.router.app import create_app
from fnserve.settings import Settings


class ScriptedServing:
    """Hands out ``urls`` in order, the last one for every request after, and records what the router
    reported back (replicas it found unreachable, endpoints it released)."""

    fetches_models = True
    shared = False
    splits_traffic = False

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.unreachable_seen: list[str] = []
        self.released: list[str] = []

    async def acquire(self, name: str, canary: bool = False) -> Endpoint:
        url = self.urls.pop(0) if len(self.urls) > 1 else self.urls[0]
        return Endpoint(name, url, url)

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint.replica)

    def unreachable(self, endpoint: Endpoint) -> None:
        self.unreachable_seen.append(endpoint.replica)

    async def start(self) -> None: ...
    async def apply(self, revision: Revision, *, verify: bool = True, canary: int = 0) -> None: ...
    def follow(self, name: str, rollout: Any) -> None: ...
    async def promote(self, name: str) -> None: ...
    async def drop_canary(self, name: str) -> None: ...
    async def delete(self, name: str) -> None: ...
    def status(self, name: str) -> FunctionStatus:  # counting restarts and refusals, as the embedded backend does
        return FunctionStatus(name, 1, True, restarts={}, queue_rejections=0)
    async def logs(self, name: str, tail: int) -> str: return ""
    async def close(self) -> None: ...


class NoTraining:
    """The Training side: these tests submit no jobs."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...


@contextlib.asynccontextmanager
async def in_process(tmp_path: Path, urls: list[str], functions: list[dict[str, Any]],
                     **settings: Any) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The real app over ScriptedServing(urls), ``functions`` (manifests) deployed as revision 1, started,
    and a client for it calling from 10.1.2.3."""
    app = create_app(Settings(state_dir=tmp_path, **settings), ScriptedServing(urls),  # type: ignore[arg-type]
                     NoTraining())  # type: ignore[arg-type]
    for data in functions:
        revision = Revision(parse_function(data), 1, tmp_path, tmp_path, time.time())
        app.state.services.functions.table[revision.name] = revision
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.1.2.3", 4321)),
                                     base_url="http://router", timeout=10) as client:
            yield app, client
