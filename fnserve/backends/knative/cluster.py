"""KnativeBackend: the Serving protocol on a Kubernetes cluster with Knative Serving and KServe.

``fnserve up --backend knative`` runs the router in the cluster with this backend. A deploy renders
the revision (render.py), server-side applies it with field manager ``fnserve`` and waits, with a
deadline, for the InferenceService's ``Ready`` condition at the applied generation; a condition that
turns False becomes a DeployFailed naming its reason and message. Requests go to the InferenceService's
cluster-local ``status.address.url``; Knative's activator buffers them across a scale from zero, so
acquire() has nothing to wait for. Training is KnativeJobs' (jobs.py); the two share one ClusterApi
(api.py), which this side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from fnserve.backends.base import (
    DeployFailed,
    Endpoint,
    FunctionNotFound,
    FunctionStatus,
    NoReadyReplica,
    ReplicaStatus,
)
from fnserve.backends.knative.api import ISVC, ClusterApi, condition
from fnserve.backends.knative.folders import folder_files
from fnserve.backends.knative.render import (
    FUNCTION_LABEL,
    MANAGED_BY,
    ClusterConfig,
    RenderError,
    config_from_settings,
    render_function,
)
from fnserve.records import Revision
from fnserve.settings import Settings
from fnserve.tasks import BackgroundTasks

log = logging.getLogger("fnserve.knative")

_REFRESH_SECONDS = 5.0


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
    shared = True

    def __init__(self, settings: Settings, api: ClusterApi) -> None:
        self.settings = settings
        self.config: ClusterConfig = config_from_settings(settings)
        self.namespace = api.namespace
        self.api = api
        self._objects: dict[str, dict[str, Any]] = {}
        self._revisions: dict[str, int] = {}
        self._pods: dict[str, list[dict[str, Any]]] = {}
        self._tasks = BackgroundTasks()
        self._refresher: asyncio.Task[None] | None = None

    # -- functions -------------------------------------------------------------------------------------
    async def apply(self, revision: Revision, *, verify: bool = True) -> None:
        self._ensure_refresher()
        try:
            files = await asyncio.to_thread(folder_files, revision.source_dir)
            configmap, isvc = render_function(revision.function, files, self.config, revision.number)
        except RenderError as exc:
            raise DeployFailed(f"{revision.name}: {exc}") from None
        await self.api.apply(configmap)
        applied = await self.api.apply(isvc)
        self._objects[revision.name] = applied
        self._revisions[revision.name] = revision.number
        if verify:
            generation = (applied.get("metadata") or {}).get("generation")
            self._objects[revision.name] = await self._wait_ready(revision.name, generation)
        self._tasks.spawn(self._collect_code(revision.name, configmap["metadata"]["name"]))
        log.info("%s: revision %d applied as InferenceService %s/%s", revision.name, revision.number,
                 self.namespace, revision.name)

    async def _wait_ready(self, name: str, generation: int | None) -> dict[str, Any]:
        """Poll-free wait: a GET, then a watch on the one object until Ready (or failed, or the deadline)."""
        from kubernetes import watch

        timeout = self.settings.cluster_ready_timeout
        deadline = time.monotonic() + timeout
        why = "not found"
        while True:
            obj = await self.api.get(ISVC, name)
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
                stream = watch.Watch().stream(self.api.custom.list_namespaced_custom_object, *ISVC[:2],
                                              self.namespace, ISVC[2], field_selector=f"metadata.name={name}",
                                              resource_version=resource_version,
                                              timeout_seconds=max(1, min(int(seconds), 60)))
                for event in stream:
                    if readiness(event["object"], generation)[0] != "pending" or event["type"] == "DELETED":
                        return

            await self.api.call(watch_once)

    async def _collect_code(self, name: str, keep: str) -> None:
        """Delete the function's older code ConfigMaps once a revision serves (each is content-named)."""
        with contextlib.suppress(Exception):
            listed = await self.api.call(self.api.core.list_namespaced_config_map, self.namespace,
                                         label_selector=f"{FUNCTION_LABEL}={name}")
            for item in listed.items:
                configmap = item.metadata.name if item.metadata else None
                if configmap is not None and configmap != keep:
                    await self.api.call(self.api.core.delete_namespaced_config_map, configmap, self.namespace)

    async def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await self.api.call(self.api.custom.delete_namespaced_custom_object, *ISVC[:2], self.namespace, ISVC[2],
                                name)
        except ApiException:
            raise FunctionNotFound(f"function {name!r} not found in namespace {self.namespace}") from None
        self._objects.pop(name, None)
        self._revisions.pop(name, None)
        self._tasks.spawn(self._collect_code(name, keep=""))

    async def acquire(self, name: str) -> Endpoint:
        obj = self._objects.get(name)
        url = ((obj or {}).get("status") or {}).get("address", {}).get("url")
        if not url:
            obj = await self.api.get(ISVC, name)
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
                listed = await self.api.call(self.api.custom.list_namespaced_custom_object, *ISVC[:2],
                                             self.namespace, ISVC[2],
                                             label_selector=",".join(f"{k}={v}" for k, v in MANAGED_BY.items()))
                # declared ``object``: an untyped call's answer is the JSON list object
                for obj in cast("dict[str, Any]", listed).get("items", []):
                    if obj["metadata"]["name"] in self._objects:
                        self._objects[obj["metadata"]["name"]] = obj
                for name in list(self._objects):
                    self._pods[name] = await self._function_pods(name)
            await asyncio.sleep(_REFRESH_SECONDS)

    async def _function_pods(self, name: str) -> list[dict[str, Any]]:
        pods = await self.api.call(self.api.core.list_namespaced_pod, self.namespace,
                                   label_selector=f"serving.kserve.io/inferenceservice={name}")
        return [{"name": p.metadata.name, "phase": (p.status.phase or "Unknown") if p.status else "Unknown",
                 "ip": (p.status.pod_ip or "") if p.status else "",
                 "started": p.status.start_time.timestamp() if p.status and p.status.start_time else 0.0}
                for p in pods.items if p.metadata is not None]

    async def logs(self, name: str, tail: int) -> str:
        if name not in self._objects:
            raise FunctionNotFound(f"function {name!r} not found")
        pods = await self._function_pods(name)
        parts = []
        for pod in pods[-3:]:
            text = await self.api.call(self.api.core.read_namespaced_pod_log, pod["name"], self.namespace,
                                       container="kserve-container", tail_lines=tail)
            parts.append(f"==> {pod['name']} <==\n{text.rstrip()}")
        return "\n".join(parts) or f"{name}: no pods (scaled to zero)"

    async def start(self) -> None:
        self._ensure_refresher()

    async def close(self) -> None:
        """Stop refreshing and close the API client the jobs shared (they are closed first)."""
        if self._refresher is not None:
            self._refresher.cancel()
        self._tasks.cancel()
        with contextlib.suppress(Exception):
            await self.api.close()
