"""KnativeJobs: the Training protocol on a Kubernetes cluster — runs as Jobs, followed to their end.

A run goes through a JobSink (one CloudEvent per run) when the cluster has Knative Eventing, else it is
a plain Job per run; either way the job wrapper in the pod publishes the run. A run's Job is found by
name (ours, or the one the JobSink receiver derives), polled until it completes or fails, and the run's
metrics are read back from its ``_manifest.json`` in the artifact store. Runs outlive the router, so
start() follows the unfinished ones again. Serving is KnativeBackend's (cluster.py); the two share one
ClusterApi (api.py), which the serving side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from fnserve.backends.base import BackendError, JobFinished, JobNotFound
from fnserve.backends.knative.api import JOBSINK, ClusterApi, ClusterError, condition
from fnserve.backends.knative.folders import folder_files
from fnserve.backends.knative.render import (
    ClusterConfig,
    RenderError,
    cloud_event,
    config_from_settings,
    event_source,
    job_output,
    jobsink_job_name,
    render_job,
    render_jobsink,
    run_job_name,
)
from fnserve.manifest import TrainingJob
from fnserve.records import JobRecord
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import ArtifactError, new_run_id, open_store, read_manifest
from fnserve.tasks import BackgroundTasks

log = logging.getLogger("fnserve.knative")

_JOB_POLL_SECONDS = 2.0


class KnativeJobs:
    def __init__(self, settings: Settings, state: StateStore, api: ClusterApi) -> None:
        self.settings = settings
        self.state = state
        self.config: ClusterConfig = config_from_settings(settings)
        self.namespace = api.namespace
        self.api = api
        self._tasks = BackgroundTasks()
        self._job_done: dict[str, asyncio.Event] = {}
        self._jobsink = settings.cluster_jobsink
        """Runs go through a JobSink until the cluster shows it has no JobSink API."""

    async def start(self) -> None:
        await self.restore_jobs()

    async def submit_job(self, job: TrainingJob, source_dir: Path, params: dict[str, Any]) -> JobRecord:
        try:
            output = job_output(job, self.config)
            files = await asyncio.to_thread(folder_files, source_dir)
            run_id = new_run_id()
            plain = render_job(job, files, self.config, run_id, params)
            sink = render_jobsink(job, files, self.config) if self._jobsink else None
        except RenderError as exc:
            raise BackendError(f"{job.name}: {exc}") from None
        record = JobRecord(run_id, job.name, job.spec.function, "queued", job.to_dict(), str(source_dir), params,
                           output, time.time())
        if sink is not None:
            try:
                for body in sink:
                    await self.api.apply(body)
            except ClusterError as exc:
                if "has no JobSink API" not in str(exc):
                    raise
                log.warning("no JobSink API in this cluster (Knative Eventing < 1.15 or absent); runs become "
                            "plain Jobs from now on")
                self._jobsink = False
        if self._jobsink:
            record.message = await self._post_event(job, run_id, params)
        else:
            for body in plain:
                await self.api.apply(body)
        await asyncio.to_thread(self.state.save_job, record)
        self._job_done[run_id] = asyncio.Event()
        self._tasks.spawn(self._track(record))
        return record

    async def _post_event(self, job: TrainingJob, run_id: str, params: dict[str, Any]) -> str:
        """Ask the JobSink for one run; returns where the receiver reports its status (its Location,
        made absolute). The run's Job is found by name (jobsink_job_name), not through it."""
        deadline = time.monotonic() + 60
        sink = await self.api.get(JOBSINK, job.name)
        while not (sink and condition(sink, "Ready").get("status") == "True"):
            if time.monotonic() > deadline:
                raise BackendError(f"{job.name}: the JobSink did not become Ready within 60 s")
            await asyncio.sleep(0.5)
            sink = await self.api.get(JOBSINK, job.name)
        url = ((sink.get("status") or {}).get("address") or {}).get("url") or \
            f"{self.settings.cluster_jobsink_url}/{self.namespace}/{job.name}"
        body = json.dumps(cloud_event(job, self.config, run_id, params)).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/cloudevents+json"})

        def post() -> str:
            with urllib.request.urlopen(request, timeout=30) as response:
                return urljoin(url, response.headers.get("Location", ""))

        try:
            return await asyncio.to_thread(post)
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"{job.name}: the JobSink at {url} refused the run: {exc}") from None

    async def _run_job(self, record: JobRecord) -> dict[str, Any] | None:
        """The Kubernetes Job of a run — named by us (a plain Job) or by the JobSink receiver — or None
        while it does not exist (yet)."""
        from kubernetes.client.exceptions import ApiException

        job = TrainingJob.model_validate(record.manifest)
        for name in (run_job_name(record.name, record.id),
                     jobsink_job_name(job.name, event_source(job, self.config), record.id)):
            try:
                found = await self.api.call(self.api.batch.read_namespaced_job, name, self.namespace)
            except ApiException:
                continue
            return self.api.plain(found)
        return None

    async def _track(self, record: JobRecord) -> None:
        """Follow a run until its Job ends, then record the outcome (and the metrics it published)."""
        try:
            while not record.done:
                job = await self._run_job(record)
                status = (job or {}).get("status") or {}
                if job is not None and record.state == "queued" and (status.get("active") or status.get("startTime")):
                    record.state, record.started_at = "running", time.time()
                    await asyncio.to_thread(self.state.save_job, record)
                complete, failed = condition(job or {}, "Complete"), condition(job or {}, "Failed")
                if complete.get("status") == "True":
                    await self._finish(record, "succeeded", 0, "published")
                elif failed.get("status") == "True":
                    timed_out = failed.get("reason") == "DeadlineExceeded"
                    await self._finish(record, "timed_out" if timed_out else "failed", None,
                                       f"{failed.get('reason', '')}: {failed.get('message', '')}".strip(": "))
                else:
                    await asyncio.sleep(_JOB_POLL_SECONDS)
        except BackendError as exc:
            log.warning("job %s: lost track of it: %s", record.id, exc)
        finally:
            self._job_done.setdefault(record.id, asyncio.Event()).set()

    async def _finish(self, record: JobRecord, state: str, code: int | None, message: str) -> None:
        if state == "succeeded":
            store = open_store(record.output, self.settings.s3_options()).child(record.id)
            try:
                run = await asyncio.to_thread(read_manifest, store)
            except ArtifactError as exc:
                run, message = None, str(exc)
            if run is None:
                state, message = "failed", f"the Job completed but no run was published at {store.uri}"
            else:
                record.metrics = run.get("metrics") or {}
                default = f"{self.config.artifact_root.rstrip('/')}/{record.function}"
                record.artifact_uri = (f"artifacts://{record.function}/{record.id}" if record.output == default
                                       else store.uri)
        record.state, record.exit_code, record.message, record.finished_at = state, code, message, time.time()
        await asyncio.to_thread(self.state.save_job, record)

    def job_status(self, job_id: str) -> JobRecord:
        record = self.state.job(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id!r}")
        return record

    def jobs(self, limit: int) -> list[JobRecord]:
        return self.state.jobs(limit)

    async def wait_job(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.job_status, job_id)
        event = self._job_done.get(job_id)
        if not record.done and event is not None:
            await event.wait()
        return await asyncio.to_thread(self.job_status, job_id)

    async def job_logs(self, job_id: str, follow: bool) -> AsyncIterator[bytes]:
        """The run's pod log (the whole log each time; with ``follow``, re-read until the job ends)."""
        sent = 0
        while True:
            record = await asyncio.to_thread(self.job_status, job_id)
            text = await self._job_log(record)
            if len(text) > sent:
                yield text[sent:].encode()
                sent = len(text)
            if record.done or not follow:
                return
            await asyncio.sleep(_JOB_POLL_SECONDS)

    async def _job_log(self, record: JobRecord) -> str:
        job = await self._run_job(record)
        if job is None:
            return ""
        pods = await self.api.call(self.api.core.list_namespaced_pod, self.namespace,
                                   label_selector=f"job-name={job['metadata']['name']}")
        texts = []
        for pod in pods.items:
            if pod.metadata is None:
                continue
            with contextlib.suppress(Exception):
                texts.append(await self.api.call(self.api.core.read_namespaced_pod_log, pod.metadata.name,
                                                 self.namespace, container="train"))
        return "".join(texts)

    async def cancel_job(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.job_status, job_id)
        if record.done:
            raise JobFinished(f"job {job_id} already finished ({record.state})")
        job = await self._run_job(record)
        if job is not None:  # the pods get SIGTERM; the wrapper publishes nothing
            with contextlib.suppress(Exception):
                await self.api.call(self.api.batch.delete_namespaced_job, job["metadata"]["name"], self.namespace,
                                    propagation_policy="Background")
        await self._finish(record, "cancelled", None, "cancelled; the Job was deleted")
        return record

    async def restore_jobs(self) -> None:
        """Runs outlive the router in a cluster: follow the unfinished ones again after a restart."""
        for record in await asyncio.to_thread(self.state.jobs, 10_000):
            if not record.done and record.id not in self._job_done:
                self._job_done[record.id] = asyncio.Event()
                self._tasks.spawn(self._track(record))

    async def close(self) -> None:
        """Stop following runs (they go on in the cluster and are followed again after a restart)."""
        self._tasks.cancel()
