"""LocalJobs: the Training protocol on this machine — jobs as subprocesses, through the job wrapper.

Jobs wait in a FIFO queue and run ``FNSERVE_MAX_JOBS`` at a time (default 1: training on a laptop
should not starve the replicas). A job asking for GPUs takes them from the same inventory replicas use
and waits while they are held; a CPU job behind it does not wait for it. Each job gets a folder
``<state>/jobs/<id>/`` with the manifest as submitted, its log and a scratch folder that is deleted
when the job ends, however it ends. Records persist in SQLite; a job that was queued or running when
the platform stopped is marked failed on the next start (the wrapper dies with the platform).

The wrapper enforces the timeout and stops the command's process group; LocalJobs holds a second,
later deadline in case the wrapper itself hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from fnserve.backends.base import BackendError, JobFinished, JobNotFound
from fnserve.backends.local.gpus import GpuInventory
from fnserve.manifest import TrainingJob
from fnserve.records import JobRecord
from fnserve.replica_contract import parent_env
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import new_run_id
from fnserve.tasks import BackgroundTasks

log = logging.getLogger("fnserve.jobs")

_WRAPPER_SLACK = 30.0
"""Seconds past the job's own timeout (and stop grace) before LocalJobs kills a stuck wrapper."""


class LocalJobs:
    def __init__(self, settings: Settings, state: StateStore, gpus: GpuInventory) -> None:
        self.settings = settings
        self.state = state
        self.gpus = gpus
        gpus.on_freed(self.schedule)  # a job waiting for GPUs starts once a replica or job gives them back
        self._queue: list[JobRecord] = []
        self._running: set[str] = set()
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._cancelled: set[str] = set()
        """Jobs asked to stop: a wrapper stopped before it could write its outcome was cancelled, not failed."""
        self._finished: dict[str, asyncio.Event] = {}
        self._tasks = BackgroundTasks()
        self._closing = False
        for record in state.jobs(limit=10_000):
            if record.deploy == "pending":
                record.deploy = "not deployed: the platform stopped first"
            if not record.done:
                self._end(record, "failed", f"the platform stopped while the job was {record.state}")
            elif record.deploy.startswith("not deployed"):
                self.state.save_job(record)

    def _folder(self, job_id: str) -> Path:
        return self.settings.state_dir / "jobs" / job_id

    def log_path(self, job_id: str) -> Path:
        return self._folder(job_id) / "job.log"

    def _end(self, record: JobRecord, state: str, message: str, exit_code: int | None = None) -> None:
        record.state, record.message, record.exit_code = state, message, exit_code
        record.finished_at = time.time()
        self.state.save_job(record)

    async def start(self) -> None:
        """Nothing to start: jobs interrupted by the last shutdown were marked failed on construction."""

    # -- submitting and scheduling -------------------------------------------------------------
    async def submit_job(self, job: TrainingJob, source_dir: Path, params: dict[str, Any]) -> JobRecord:
        spec = job.spec
        output = spec.output or f"{self.settings.artifacts_uri()}/{spec.function}"
        wanted = spec.resources.gpu
        if wanted > len(self.gpus.ids):
            raise BackendError(f"{job.name}: spec.resources.gpu asks for {wanted} GPU(s); this machine hands out "
                               f"{len(self.gpus.ids)} ({', '.join(self.gpus.ids) or 'none'})")
        record = JobRecord(new_run_id(), job.name, spec.function, "queued", job.to_dict(), str(source_dir), params,
                           output, time.time())
        folder = self._folder(record.id)
        await asyncio.to_thread(self._prepare, folder, record)
        self._finished[record.id] = asyncio.Event()
        self._queue.append(record)
        log.info("job %s (%s for %s) queued", record.id, job.name, spec.function)
        self.schedule()
        return record

    def _prepare(self, folder: Path, record: JobRecord) -> None:
        folder.mkdir(parents=True)
        (folder / "train.yaml").write_text(yaml.safe_dump(record.manifest, sort_keys=False))
        self.state.save_job(record)

    def schedule(self) -> None:
        """Start queued jobs while there is a free slot and their GPUs are free; call after any change."""
        for record in list(self._queue):
            if len(self._running) >= self.settings.max_jobs or self._closing:
                return
            wanted = TrainingJob.model_validate(record.manifest).spec.resources.gpu
            gpus = self.gpus.take(wanted, f"job:{record.id}") if wanted else []
            if gpus is None:
                continue
            self._queue.remove(record)
            self._running.add(record.id)
            self._tasks.spawn(self._run(record, gpus))

    async def _run(self, record: JobRecord, gpus: list[str]) -> None:
        folder = self._folder(record.id)
        job = TrainingJob.model_validate(record.manifest)
        result = folder / "result.json"
        argv = [self.settings.python, "-m", "fnserve.jobs.run", "--manifest", str(folder / "train.yaml"),
                "--function-dir", record.source_dir, "--output", record.output, "--run-id", record.id,
                "--params", json.dumps(record.params), "--scratch", str(folder / "scratch"), "--result", str(result)]
        env = {**os.environ, **self.settings.s3_env(), **parent_env(),
               "FNSERVE_JOB_STOP_TIMEOUT": str(self.settings.job_stop_timeout),
               "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
        try:
            with self.log_path(record.id).open("ab") as log_file:
                process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                    env=env, cwd=record.source_dir, start_new_session=True)
            self._processes[record.id] = process
            record.state, record.started_at = "running", time.time()
            await asyncio.to_thread(self.state.save_job, record)
            log.info("job %s running (pid %d%s)", record.id, process.pid, f", GPUs {','.join(gpus)}" if gpus else "")
            limit = job.spec.timeout + self.settings.job_stop_timeout + _WRAPPER_SLACK
            try:
                code = await asyncio.wait_for(process.wait(), limit)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                code = await process.wait()
            await asyncio.to_thread(self._record_outcome, record, result, code)
        except Exception as exc:  # a failure to start the wrapper is the job's failure, not the platform's
            log.exception("job %s could not run", record.id)
            self._end(record, "failed", f"could not start the job wrapper: {exc}")
        finally:
            self._processes.pop(record.id, None)
            self._cancelled.discard(record.id)
            self._running.discard(record.id)
            shutil.rmtree(folder / "scratch", ignore_errors=True)
            if gpus:
                self.gpus.give_back(f"job:{record.id}")  # waiting replicas and jobs are told
            self._finished.setdefault(record.id, asyncio.Event()).set()
            log.info("job %s %s: %s", record.id, record.state, record.message)
            self.schedule()

    def _record_outcome(self, record: JobRecord, result: Path, code: int) -> None:
        try:
            outcome = json.loads(result.read_text())
        except (OSError, ValueError):
            if record.id in self._cancelled:  # stopped while it was still starting, before its signal handler
                self._end(record, "cancelled", "cancelled before the job's command started; nothing was published",
                          code)
            else:
                self._end(record, "failed", f"the job wrapper ended with status {code} without a result; see the log",
                          code)
            return
        record.metrics = outcome.get("metrics") or {}
        uri = outcome.get("artifactUri")
        if uri and record.output == f"{self.settings.artifacts_uri()}/{record.function}":
            uri = f"artifacts://{record.function}/{record.id}"  # portable: the same URI works in a cluster
        record.artifact_uri = uri
        self._end(record, outcome["state"], outcome.get("message", ""), outcome.get("exitCode", code))

    # -- inspecting and stopping -------------------------------------------------------------------
    def job_status(self, job_id: str) -> JobRecord:
        for record in self._queue:
            if record.id == job_id:
                return record
        stored = self.state.job(job_id)
        if stored is None:
            raise JobNotFound(f"no job {job_id!r}")
        return stored

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        return self.state.jobs(limit)

    async def wait_job(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.job_status, job_id)
        event = self._finished.get(job_id)
        if not record.done and event is not None:
            await event.wait()
        return await asyncio.to_thread(self.job_status, job_id)

    async def cancel_job(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.job_status, job_id)
        if record.done:
            raise JobFinished(f"job {job_id} already finished ({record.state})")
        if record in self._queue:
            self._queue.remove(record)
            await asyncio.to_thread(self._end, record, "cancelled", "cancelled while queued")
            self._finished[job_id].set()
            return record
        process = self._processes.get(job_id)
        if process is not None:
            self._cancelled.add(job_id)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the wrapper stops the command's whole group
        return await self.wait_job(job_id)

    async def job_logs(self, job_id: str, follow: bool) -> AsyncIterator[bytes]:
        """The job's log from the start; with ``follow``, new output as it comes until the job ends."""
        record = await asyncio.to_thread(self.job_status, job_id)
        path = self.log_path(job_id)
        offset = 0
        while True:
            finished = record.done
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            if finished or not follow:
                return
            await asyncio.sleep(0.2)
            record = await asyncio.to_thread(self.job_status, job_id)

    async def close(self) -> None:
        """Cancel what is queued and stop what runs (the wrappers publish nothing when stopped)."""
        self._closing = True
        for record in list(self._queue):
            self._end(record, "cancelled", "the platform stopped before the job started")
        self._queue.clear()
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        await self._tasks.wait(self.settings.job_stop_timeout + 10)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(1 << 16)
    except FileNotFoundError:
        return b""
