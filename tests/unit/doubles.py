"""Backend doubles for running the real router app in-process: a Serving side that hands out given
replica addresses, and a Training side for tests that submit no jobs."""

from __future__ import annotations

from fnserve.backends.base import Endpoint, FunctionStatus
from fnserve.records import Revision


class ScriptedServing:
    """Hands out ``urls`` in order, the last one for every request after, and records what the router
    reported back (replicas it found unreachable, endpoints it released)."""

    fetches_models = True

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.unreachable_seen: list[str] = []
        self.released: list[str] = []

    async def acquire(self, name: str) -> Endpoint:
        url = self.urls.pop(0) if len(self.urls) > 1 else self.urls[0]
        return Endpoint(name, url, url)

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint.replica)

    def unreachable(self, endpoint: Endpoint) -> None:
        self.unreachable_seen.append(endpoint.replica)

    async def start(self) -> None: ...
    async def apply(self, revision: Revision, *, verify: bool = True) -> None: ...
    async def delete(self, name: str) -> None: ...
    def status(self, name: str) -> FunctionStatus: return FunctionStatus(name, 1, True)
    async def logs(self, name: str, tail: int) -> str: return ""
    async def close(self) -> None: ...


class NoTraining:
    """The Training side: these tests submit no jobs."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
