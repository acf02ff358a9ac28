"""Several routers, one database: each polls the store's change versions and takes in what the others
changed — the function table (deploy, canary, promote, rollback, rm), API keys (create, revoke, rotate)
and tenants' limits.

Polling a version row, not LISTEN/NOTIFY or Redis pub/sub: it works the same on both engines and
needs no connection held open, a missed notification cannot exist (the version is a level, not an
edge), and at the default 0.25 s it costs each router four indexed reads of a two-row table a
second. Measured on one machine (tests/integration/test_many_routers.py): a revocation on one router
is refused by the others in 0.25–0.5 s, a deploy is served by the others once their replica started.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fnserve.database import StoreUnavailable
from fnserve.router.services.functions import FunctionService
from fnserve.router.services.keys import KeyService
from fnserve.state import StateStore

log = logging.getLogger("fnserve.router")


class ChangeWatcher:
    def __init__(self, state: StateStore, functions: FunctionService, keys: KeyService, interval: float) -> None:
        self.state = state
        self.functions = functions
        self.keys = keys
        self.interval = interval
        self._seen: dict[str, int] = {}
        self._warned_at = 0.0

    async def check(self) -> None:
        """One look at the versions; acts on the topics that moved since the last look."""
        versions = await asyncio.to_thread(self.state.versions)
        moved = {topic for topic, version in versions.items() if self._seen.get(topic) != version}
        if "keys" in moved:
            self.keys.forget_all()
        if "tenants" in moved:
            self.keys.forget_tenants()
        if "functions" in moved and not await self.functions.sync():
            versions["functions"] = self._seen.get("functions", -1)  # one was busy here: look again next time
        self._seen = versions

    async def run(self) -> None:
        await self.check()  # what changed between this router's restore and now
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except StoreUnavailable as exc:
                if time.monotonic() - self._warned_at > 10:
                    self._warned_at = time.monotonic()
                    log.warning("cannot see other routers' changes: %s", exc)
            except Exception:
                log.exception("could not take in other routers' changes; will retry")
