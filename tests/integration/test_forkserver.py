"""The fork server as the embedded backend drives it, with the example function's real model: the spare
child it forks while idle becomes the next replica, a request that finds no spare is forked on the spot,
and either kind is ready when its pipe says so and answers on the socket the router bound."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from fnserve.backends.local.processes import ForkServerClient
from fnserve.backends.local.replica import Replica, ReplicaFailed
from fnserve.manifest import load_function
from fnserve.records import Revision
from fnserve.settings import Settings
from tests.conftest import alive, wait_until
from tests.services import descendants

BODY = json.dumps({"instances": ["what a wonderful film"]})


def children(pid: int | None) -> set[int]:
    assert pid is not None
    return descendants(pid)


def open_files(pid: int) -> list[str]:
    return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]


def own_sockets(pid: int) -> set[str]:
    """The fork server's own sockets (Unix: its listener, a spare's socket pair); a replica's are TCP."""
    tcp = {line.split()[9] for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]}
    return {f for f in open_files(pid) if f.startswith("socket:") and f[8:-1] not in tcp}


def test_a_replica_whose_model_does_not_load_fails_its_start_at_once(example_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(example_dir / "model", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")

    async def scenario() -> None:
        server = ForkServerClient("onnx", tmp_path / "run" / "fs.sock", tmp_path / "fs.log", sys.executable)
        revision = Revision(load_function(example_dir), 1, example_dir, broken, time.time())
        replica = Replica(revision, example_dir / "function.yaml", tmp_path / "logs")
        try:
            await replica.start(Settings(state_dir=tmp_path), server.fork)
            started = time.monotonic()
            with pytest.raises(ReplicaFailed) as failed:
                await replica.wait_ready(120)
            assert time.monotonic() - started < 30  # told by its exit, not found out at the deadline
            assert "model.onnx" in str(failed.value)  # with the replica's own words from its log
        finally:
            await replica.stop(5)
            await server.close()

    asyncio.run(scenario())


def test_a_spare_forked_while_idle_becomes_the_next_replica(example_dir: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        server = ForkServerClient("onnx", tmp_path / "run" / "fs.sock", tmp_path / "fs.log", sys.executable,
                                  spare_after=0.05)
        revision = Revision(load_function(example_dir), 1, example_dir, example_dir / "model", time.time())
        settings = Settings(state_dir=tmp_path)
        replicas = [Replica(revision, example_dir / "function.yaml", tmp_path / "logs") for _ in range(2)]
        try:
            # the first request is sent at once: it waits in the fork server's accept queue while it imports
            await replicas[0].start(settings, server.fork)
            await replicas[0].wait_ready(60)
            # idle now: after spare_after it forks a spare, a child that is not the replica
            await wait_until(lambda: children(server.pid) - {replicas[0].pid}, 30, "a spare child")
            (spare,) = children(server.pid) - {replicas[0].pid}
            await replicas[1].start(settings, server.fork)
            assert replicas[1].pid == spare  # the spare became the replica: no fork on this request's path
            await replicas[1].wait_ready(60)
            assert replicas[1].times is not None and replicas[1].times.loaded_at <= replicas[1].ready_at
            async with aiohttp.ClientSession() as session:
                for replica in replicas:
                    async with session.post(f"{replica.url}/v1/models/sentiment:predict", data=BODY,
                                            headers={"Content-Type": "application/json"}) as answer:
                        assert answer.status == 200
                        assert (await answer.json())["predictions"][0]["label"] == "positive"
            assert "fork server for onnx ready" in (tmp_path / "fs.log").read_text()
            await wait_until(lambda: children(server.pid) - {r.pid for r in replicas}, 30, "the next spare")
            (next_spare,) = children(server.pid) - {r.pid for r in replicas}
            for pid in (server.pid, next_spare):  # what they were handed went on to the replicas
                assert pid is not None and not [f for f in open_files(pid) if f.startswith(("pipe:", "socket:"))
                                                 and f not in own_sockets(pid)], open_files(pid)
        finally:
            await asyncio.gather(*(replica.stop(5) for replica in replicas))
            await server.close()
        # a spare ends with its fork server: nothing is left behind
        await wait_until(lambda: not alive(next_spare), 10, "the spare to exit")

    asyncio.run(scenario())
