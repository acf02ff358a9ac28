"""A router with a fleet of N functions that cost nothing to run, for the console benchmark.

    python -m bench.console_fleet --functions 1000 --port 8081 --state-dir /tmp/fleet

The real router app (create_app, every middleware and admin route) over a stand-in Serving side whose
functions report replicas (none to three, ready or starting), requests in flight and queued, and whose
live numbers hold an hour of traffic — so the functions page and its polling do all the work they would
for a thousand deployed functions, without a thousand replica processes on a 2-core machine. It writes
an admin key to <state dir>/admin.key and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

import uvicorn

from fnserve import logs
from fnserve.backends.base import Endpoint, FunctionStatus, ReplicaStatus
from fnserve.manifest import parse_function
from fnserve.records import Revision
from fnserve.router.app import create_app
from fnserve.router.live_stats import INTERVAL
from fnserve.router.services.keys import ADMIN_SCOPES, create_key, load_pepper
from fnserve.settings import Settings
from fnserve.state import StateStore


def manifest(name: str, index: int) -> dict[str, Any]:
    return {"apiVersion": "fnserve.dev/v1", "kind": "Function",
            "metadata": {"name": name, "labels": {"team": f"team-{index % 7}", "tier": "gold" if index % 5 else "free"}},
            "spec": {"runtime": "onnx", "model": {"uri": "./model"}}}


class FleetServing:
    """Reports ``replicas`` for each function (a few states, a few requests in flight); nothing runs."""

    fetches_models = False
    shared = False
    splits_traffic = False

    def __init__(self) -> None:
        self.replicas: dict[str, list[ReplicaStatus]] = {}

    def add(self, name: str, index: int) -> None:
        count = index % 4
        self.replicas[name] = [ReplicaStatus(f"{name}-00001-{r:04x}", 1, "ready" if r or index % 9 else "starting",
                                             f"http://127.0.0.1:{20000 + r}", 1000 + r, (index + r) % 3, time.time())
                               for r in range(count)]

    def status(self, name: str) -> FunctionStatus:
        replicas = self.replicas.get(name, [])
        return FunctionStatus(name, 1, True, list(replicas), desired=len(replicas), queued=len(name) % 2,
                              start_times_ms=[180.0], restarts={}, queue_rejections=0)

    async def acquire(self, name: str, canary: bool = False) -> Endpoint:
        raise NotImplementedError("the fleet serves no requests")

    def release(self, endpoint: Endpoint) -> None: ...
    def unreachable(self, endpoint: Endpoint) -> None: ...
    async def start(self) -> None: ...
    async def apply(self, revision: Revision, *, verify: bool = True, canary: int = 0) -> None: ...
    def follow(self, name: str, rollout: Any) -> None: ...
    async def promote(self, name: str) -> None: ...
    async def drop_canary(self, name: str) -> None: ...
    async def delete(self, name: str) -> None: ...
    async def logs(self, name: str, tail: int) -> str: return ""
    async def close(self) -> None: ...


class NoTraining:
    async def start(self) -> None: ...
    async def close(self) -> None: ...


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(state_dir=args.state_dir)
    logs.configure(settings.log_level, settings.log_format_for("local"), "router", access_log=settings.access_log)
    state = StateStore(settings.state_location())
    _, token = create_key(state, load_pepper(args.state_dir), "admin", "default", list(ADMIN_SCOPES))
    (args.state_dir / "admin.key").write_text(token + "\n")
    serving = FleetServing()
    app = create_app(settings, serving, NoTraining(), state=state)  # type: ignore[arg-type]
    services = app.state.services
    rng, now = random.Random(7), time.time()
    clock = services.accounting.live.clock
    for index in range(args.functions):
        name = f"fn-{index:04d}"
        revision = Revision(parse_function(manifest(name, index)), 1, args.state_dir, args.state_dir, now)
        services.functions.table[name] = revision
        serving.add(name, index)
        if index % 3 == 0:  # a third of them served requests over the last hour
            for back in range(3600 - INTERVAL * 6, -1, -INTERVAL * 6):  # oldest first, as time passes
                services.accounting.live.clock = lambda back=back: now - back  # noqa: B023 (called at once)
                for _ in range(rng.randint(1, 5)):
                    services.accounting.live.record(name, 500 if rng.random() < 0.02 else 200,
                                                    rng.lognormvariate(3, 0.5), rng.random() < 0.01)
    services.accounting.live.clock = clock
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, loop="uvloop", log_level="warning",
                            lifespan="on", access_log=False)
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
