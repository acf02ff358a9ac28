"""KnativeBackend: the Backend protocol on a Kubernetes cluster with Knative Serving and KServe.

``fnserve up --backend knative`` runs the router in the cluster with this backend. A deploy renders
the revision (render.py), server-side applies it with field manager ``fnserve`` and waits, with a
deadline, for the InferenceService's ``Ready`` condition at the applied generation; a condition that
turns False becomes a DeployFailed naming its reason and message. Requests go to the InferenceService's
cluster-local ``status.address.url``; Knative's activator buffers them across a scale from zero, so
acquire() has nothing to wait for. Training runs become Jobs — through a JobSink (one CloudEvent per
run) when the cluster has Knative Eventing, else a plain Job per run — tracked until they finish; the
run's metrics are read back from its ``_manifest.json`` in the artifact store.

The kubernetes client is synchronous: every call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

from fnserve.backends.base import (
    BackendError,
    DeployFailed,
    Endpoint,
    FunctionNotFound,
    FunctionStatus,
    JobFinished,
    JobNotFound,
    NoReadyReplica,
    ReplicaStatus,
)
from fnserve.backends.knative.folders import folder_files
from fnserve.backends.knative.render import (
    FUNCTION_LABEL,
    MANAGED_BY,
    ClusterConfig,
    RenderError,
    cloud_event,
    config_from_settings,
    event_source,
    job_output,
    jobsink_job_name,
    render_function,
    render_job,
    render_jobsink,
    run_job_name,
)
from fnserve.manifest import TrainingJob
from fnserve.records import JobRecord, Revision
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import ArtifactError, new_run_id, open_store, read_manifest

log = logging.getLogger("fnserve.knative")

APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "fnserve"
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
JOBSINK = ("sinks.knative.dev", "v1alpha1", "jobsinks")
_PLURALS = {"InferenceService": ISVC, "JobSink": JOBSINK}
_REFRESH_SECONDS = 5.0
_JOB_POLL_SECONDS = 2.0
T = TypeVar("T")


class ClusterError(BackendError):
    """The Kubernetes API refused or failed a call; the message is the API server's."""

    status = 502


def api_client(settings: Settings) -> Any:
    """A kubernetes ApiClient: FNSERVE_CLUSTER_API_URL, else the pod's service account, else ~/.kube/config."""
    from kubernetes import client, config

    if settings.cluster_api_url:
        configuration = client.Configuration()
        configuration.host = settings.cluster_api_url
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(getattr(exc, "reason", None) or exc)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item
    return {}


def readiness(obj: dict[str, Any], generation: int | None) -> tuple[str, str]:
    """("ready" | "failed" | "pending", why) for an InferenceService at ``generation``."""
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return "pending", f"the controller has not seen generation {generation} yet"
    ready = condition(obj, "Ready")
    if ready.get("status") == "True" and (status.get("address") or {}).get("url"):
        return "ready", ""
    if ready.get("status") == "False":
        failing = [c for c in status.get("conditions") or [] if c.get("status") == "False" and c.get("type") != "Ready"]
        failing.sort(key=lambda c: c.get("type") != "PredictorReady")  # the predictor's says the most
        detail = failing[0] if failing else ready
        why = ": ".join(filter(None, [detail.get("type"), detail.get("reason"), detail.get("message")]))
        return "failed", why or "Ready is False"
    return "pending", ready.get("message") or ready.get("reason") or "waiting for the Ready condition"


class KnativeBackend:
    fetches_models = False

    def __init__(self, settings: Settings, state: StateStore, client: Any = None) -> None:
        from kubernetes import client as k8s

        self.settings = settings
        self.state = state
        self.config: ClusterConfig = config_from_settings(settings)
        self.namespace = self.config.namespace
        self._client = client or api_client(settings)
        self.custom = k8s.CustomObjectsApi(self._client)
        self.core = k8s.CoreV1Api(self._client)
        self.batch = k8s.BatchV1Api(self._client)
        self._objects: dict[str, dict[str, Any]] = {}
        self._revisions: dict[str, int] = {}
        self._pods: dict[str, list[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._job_done: dict[str, asyncio.Event] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._jobsink = settings.cluster_jobsink
        """Runs go through a JobSink until the cluster shows it has no JobSink API."""

    # -- plumbing ----------------------------------------------------------------------------------
    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise
            raise ClusterError(f"the Kubernetes API answered {exc.status}: {_message(exc)}") from None
        except (HTTPError, OSError) as exc:
            raise ClusterError(f"cannot reach the Kubernetes API: {exc}") from None

    def _apply_sync(self, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply one object (field manager fnserve, taking over conflicting fields)."""
        name, kind = body["metadata"]["name"], body["kind"]
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
        if kind == "ConfigMap":
            result = self.core.patch_namespaced_config_map(name, self.namespace, body, **options)
        elif kind == "Job":
            result = self.batch.patch_namespaced_job(name, self.namespace, body, **options)
        else:  # the untyped call returns None for 201 Created: read the raw answer instead
            group, version, plural = _PLURALS[kind]
            raw = self.custom.patch_namespaced_custom_object(group, version, self.namespace, plural, name, body,
                                                             _preload_content=False, **options)
            return json.loads(raw.data)
        return self._client.sanitize_for_serialization(result)

    async def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return await self._call(self._apply_sync, body)
        except ApiException as exc:  # 404 on apply: the API itself is missing
            raise ClusterError(f"the cluster has no {body['kind']} API ({body['apiVersion']}): is "
                               f"{'KServe' if body['kind'] == 'InferenceService' else 'Knative Eventing'} "
                               f"installed? ({_message(exc)})") from None

    async def _get(self, group_version_plural: tuple[str, str, str], name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        group, version, plural = group_version_plural
        try:
            return await self._call(self.custom.get_namespaced_custom_object, group, version, self.namespace,
                                    plural, name)
        except ApiException:
            return None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- functions -------------------------------------------------------------------------------------
    async def apply(self, revision: Revision, *, verify: bool = True) -> None:
        self._ensure_refresher()
        try:
            files = await asyncio.to_thread(folder_files, revision.source_dir)
            configmap, isvc = render_function(revision.function, files, self.config, revision.number)
        except RenderError as exc:
            raise DeployFailed(f"{revision.name}: {exc}") from None
        await self._apply(configmap)
        applied = await self._apply(isvc)
        self._objects[revision.name] = applied
        self._revisions[revision.name] = revision.number
        if verify:
            generation = (applied.get("metadata") or {}).get("generation")
            self._objects[revision.name] = await self._wait_ready(revision.name, generation)
        self._spawn(self._collect_code(revision.name, configmap["metadata"]["name"]))
        log.info("%s: revision %d applied as InferenceService %s/%s", revision.name, revision.number,
                 self.namespace, revision.name)

    async def _wait_ready(self, name: str, generation: int | None) -> dict[str, Any]:
        """Poll-free wait: a GET, then a watch on the one object until Ready (or failed, or the deadline)."""
        from kubernetes import watch

        timeout = self.settings.cluster_ready_timeout
        deadline = time.monotonic() + timeout
        why = "not found"
        while True:
            obj = await self._get(ISVC, name)
            if obj is not None:
                state, why = readiness(obj, generation)
                if state == "ready":
                    return obj
                if state == "failed":
                    raise DeployFailed(f"{name}: the InferenceService is not Ready: {why}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeployFailed(f"{name}: the InferenceService was not Ready within {timeout:g} s ({why})")
            version = (obj or {}).get("metadata", {}).get("resourceVersion")

            def watch_once(resource_version: str | None = version, seconds: float = remaining) -> None:
                stream = watch.Watch().stream(self.custom.list_namespaced_custom_object, *ISVC[:2], self.namespace,
                                              ISVC[2], field_selector=f"metadata.name={name}",
                                              resource_version=resource_version,
                                              timeout_seconds=max(1, min(int(seconds), 60)))
                for event in stream:
                    if readiness(event["object"], generation)[0] != "pending" or event["type"] == "DELETED":
                        return

            await self._call(watch_once)

    async def _collect_code(self, name: str, keep: str) -> None:
        """Delete the function's older code ConfigMaps once a revision serves (each is content-named)."""
        with contextlib.suppress(Exception):
            listed = await self._call(self.core.list_namespaced_config_map, self.namespace,
                                      label_selector=f"{FUNCTION_LABEL}={name}")
            for item in listed.items:
                if item.metadata.name != keep:
                    await self._call(self.core.delete_namespaced_config_map, item.metadata.name, self.namespace)

    async def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await self._call(self.custom.delete_namespaced_custom_object, *ISVC[:2], self.namespace, ISVC[2], name)
        except ApiException:
            raise FunctionNotFound(f"function {name!r} not found in namespace {self.namespace}") from None
        self._objects.pop(name, None)
        self._revisions.pop(name, None)
        self._spawn(self._collect_code(name, keep=""))

    async def acquire(self, name: str) -> Endpoint:
        obj = self._objects.get(name)
        url = ((obj or {}).get("status") or {}).get("address", {}).get("url")
        if not url:
            obj = await self._get(ISVC, name)
            if obj is None:
                raise FunctionNotFound(f"function {name!r} not found")
            self._objects[name] = obj
            state, why = readiness(obj, None)
            url = (obj.get("status") or {}).get("address", {}).get("url")
            if state != "ready" or not url:
                raise NoReadyReplica(f"function {name!r} is not Ready: {why}")
        return Endpoint(name, name, url.rstrip("/"))

    def release(self, endpoint: Endpoint) -> None:
        """Knative counts in-flight requests itself (queue-proxy); nothing to do here."""

    def unreachable(self, endpoint: Endpoint) -> None:
        obj = self._objects.get(endpoint.function)
        if obj is not None:  # read the address again on the next request
            self._objects[endpoint.function] = {**obj, "status": {}}

    def status(self, name: str) -> FunctionStatus:
        obj = self._objects.get(name)
        if obj is None:
            raise FunctionNotFound(f"function {name!r} not found")
        state, why = readiness(obj, None)
        replicas = [ReplicaStatus(pod["name"], self._revisions.get(name, 0), pod["phase"].lower(), pod["ip"], None, 0,
                                  pod["started"]) for pod in self._pods.get(name, [])]
        url = ((obj.get("status") or {}).get("url")) or ""
        return FunctionStatus(name, self._revisions.get(name), state == "ready", replicas,
                              "" if state == "ready" else why, desired=None, url=url)

    def _ensure_refresher(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        """status() answers from memory: the InferenceServices and their pods, re-read every few seconds."""
        while True:
            with contextlib.suppress(Exception):
                listed = await self._call(self.custom.list_namespaced_custom_object, *ISVC[:2], self.namespace,
                                          ISVC[2], label_selector=",".join(f"{k}={v}" for k, v in MANAGED_BY.items()))
                for obj in listed.get("items", []):
                    if obj["metadata"]["name"] in self._objects:
                        self._objects[obj["metadata"]["name"]] = obj
                for name in list(self._objects):
                    self._pods[name] = await self._function_pods(name)
            await asyncio.sleep(_REFRESH_SECONDS)

    async def _function_pods(self, name: str) -> list[dict[str, Any]]:
        pods = await self._call(self.core.list_namespaced_pod, self.namespace,
                                label_selector=f"serving.kserve.io/inferenceservice={name}")
        return [{"name": p.metadata.name, "phase": (p.status.phase or "Unknown") if p.status else "Unknown",
                 "ip": (p.status.pod_ip or "") if p.status else "",
                 "started": p.status.start_time.timestamp() if p.status and p.status.start_time else 0.0}
                for p in pods.items]

    async def logs(self, name: str, tail: int) -> str:
        if name not in self._objects:
            raise FunctionNotFound(f"function {name!r} not found")
        pods = await self._function_pods(name)
        parts = []
        for pod in pods[-3:]:
            text = await self._call(self.core.read_namespaced_pod_log, pod["name"], self.namespace,
                                    container="kserve-container", tail_lines=tail)
            parts.append(f"==> {pod['name']} <==\n{text.rstrip()}")
        return "\n".join(parts) or f"{name}: no pods (scaled to zero)"

    # -- training jobs -----------------------------------------------------------------------------------
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
                    await self._apply(body)
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
                await self._apply(body)
        await asyncio.to_thread(self.state.save_job, record)
        self._job_done[run_id] = asyncio.Event()
        self._spawn(self._track(record))
        return record

    async def _post_event(self, job: TrainingJob, run_id: str, params: dict[str, Any]) -> str:
        """Ask the JobSink for one run; returns where the receiver reports its status (its Location,
        made absolute). The run's Job is found by name (jobsink_job_name), not through it."""
        deadline = time.monotonic() + 60
        sink = await self._get(JOBSINK, job.name)
        while not (sink and condition(sink, "Ready").get("status") == "True"):
            if time.monotonic() > deadline:
                raise BackendError(f"{job.name}: the JobSink did not become Ready within 60 s")
            await asyncio.sleep(0.5)
            sink = await self._get(JOBSINK, job.name)
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
                found = await self._call(self.batch.read_namespaced_job, name, self.namespace)
            except ApiException:
                continue
            return self._client.sanitize_for_serialization(found)
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
        pods = await self._call(self.core.list_namespaced_pod, self.namespace,
                                label_selector=f"job-name={job['metadata']['name']}")
        texts = []
        for pod in pods.items:
            with contextlib.suppress(Exception):
                texts.append(await self._call(self.core.read_namespaced_pod_log, pod.metadata.name, self.namespace,
                                              container="train"))
        return "".join(texts)

    async def cancel_job(self, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.job_status, job_id)
        if record.done:
            raise JobFinished(f"job {job_id} already finished ({record.state})")
        job = await self._run_job(record)
        if job is not None:  # the pods get SIGTERM; the wrapper publishes nothing
            with contextlib.suppress(Exception):
                await self._call(self.batch.delete_namespaced_job, job["metadata"]["name"], self.namespace,
                                 propagation_policy="Background")
        await self._finish(record, "cancelled", None, "cancelled; the Job was deleted")
        return record

    async def start(self) -> None:
        self._ensure_refresher()
        await self.restore_jobs()

    async def restore_jobs(self) -> None:
        """Runs outlive the router in a cluster: follow the unfinished ones again after a restart."""
        for record in await asyncio.to_thread(self.state.jobs, 10_000):
            if not record.done and record.id not in self._job_done:
                self._job_done[record.id] = asyncio.Event()
                self._spawn(self._track(record))

    async def close(self) -> None:
        for task in [self._refresher, *self._tasks]:
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._client.close)
