"""Training jobs: submitted to the training backend, and a function rolled forward when one succeeds.

A job with ``deployOnSuccess`` changes only the model: the function's current revision (or, if it was
never deployed, the function.yaml beside the job's manifest) with ``model.uri`` pinned to the new run.
The roll-forward is followed here, beside the request path, and its outcome written on the job record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fnserve.backends.base import BackendError, Training
from fnserve.manifest import ManifestError, Problem, TrainingJob, parse_function, parse_training_job, read_yaml
from fnserve.records import JobRecord
from fnserve.router.services.audit import SYSTEM, Actor, AuditLog
from fnserve.router.services.functions import DeployRejected, FunctionService, source_folder
from fnserve.state import StateStore
from fnserve.tasks import BackgroundTasks

log = logging.getLogger("fnserve.router")


class TrainingService:
    def __init__(self, state: StateStore, training: Training, functions: FunctionService, audit: AuditLog) -> None:
        self.state = state
        self.audit = audit
        self.training = training
        self.functions = functions
        self._followers = BackgroundTasks()

    async def jobs(self, limit: int) -> list[JobRecord]:
        return await asyncio.to_thread(self.training.jobs, limit)

    async def job(self, job_id: str) -> JobRecord:
        """Raises JobNotFound."""
        return await asyncio.to_thread(self.training.job_status, job_id)

    def logs(self, job_id: str, follow: bool) -> AsyncIterator[bytes]:
        return self.training.job_logs(job_id, follow)

    async def cancel(self, job_id: str, actor: Actor = SYSTEM) -> JobRecord:
        async with self.audit.action(actor, "job.cancel", job_id):
            return await self.training.cancel_job(job_id)

    async def submit(self, manifest: Any, source_dir: str, source: str,
                     params: dict[str, Any] | None = None, actor: Actor = SYSTEM) -> JobRecord:
        """Validate and queue a training job; with deployOnSuccess, roll the function forward after it."""
        async with self.audit.action(actor, "job.submit", source[:253], params=sorted(params or {})) as detail:
            record = await self._submit(manifest, source_dir, source, params)
            detail.update(jobId=record.id, function=record.function)
        return record

    async def _submit(self, manifest: Any, source_dir: str, source: str,
                      params: dict[str, Any] | None) -> JobRecord:
        try:
            job = parse_training_job(manifest, source)
        except ManifestError as exc:
            raise DeployRejected(f"invalid manifest: {exc}", exc.problems) from None
        folder = source_folder(source_dir)
        if job.spec.deploy_on_success and job.spec.function not in self.functions.table:
            await asyncio.to_thread(self._function_beside, job, folder, source)
        record = await self.training.submit_job(job, folder, {**job.spec.params, **(params or {})})
        if job.spec.deploy_on_success:
            record.deploy = "pending"
            await asyncio.to_thread(self.state.save_job, record)
            self._followers.spawn(self._deploy_when_done(record.id, job, folder, source))
        return record

    @staticmethod
    def _function_beside(job: TrainingJob, folder: Path, source: str) -> tuple[Any, Path]:
        """The manifest data of the function.yaml beside the job's manifest, when it defines the function."""
        path = folder / "function.yaml"
        problem = Problem("spec.deployOnSuccess", f"function {job.spec.function!r} is not deployed and "
                                                  f"{path} does not define it; deploy it first")
        try:
            data = read_yaml(path)
            function = parse_function(data, str(path))
        except ManifestError:
            raise DeployRejected(problem.render(source), [problem]) from None
        if function.name != job.spec.function:
            raise DeployRejected(problem.render(source), [problem])
        return data, folder

    async def _deploy_when_done(self, job_id: str, job: TrainingJob, folder: Path, source: str) -> None:
        record = await self.training.wait_job(job_id)
        if record.state != "succeeded" or not record.artifact_uri:
            record.deploy = ""  # nothing was published, so there is nothing to roll forward to
            await asyncio.to_thread(self.state.save_job, record)
            return
        name = job.spec.function
        try:
            current = self.functions.get(name)
            if current is not None:
                data, source_dir = current.function.to_dict(), current.source_dir
            else:
                data, source_dir = await asyncio.to_thread(self._function_beside, job, folder, source)
            data["spec"]["model"]["uri"] = record.artifact_uri
            revision, _ = await self.functions.deploy(data, str(source_dir), f"{name} (job {job_id})")
            outcome = f"revision {revision.number}"
            log.info("%s: job %s deployed as revision %d", name, job_id, revision.number)
        except (DeployRejected, BackendError) as exc:
            outcome = f"not deployed: {exc}"
            log.error("%s: job %s succeeded but its run was %s", name, job_id, outcome)
        record.deploy = outcome
        await asyncio.to_thread(self.state.save_job, record)

    async def close(self) -> None:
        self._followers.cancel()
