"""KnativeBackend: the Serving protocol on a Kubernetes cluster with Knative Serving and KServe.

``fnserve up --backend knative`` runs the router in the cluster with this backend. A deploy renders
the revision (render.py), server-side applies it with field manager ``fnserve`` and waits, with a
deadline, for the InferenceService's ``Ready`` condition at the applied generation; a condition that
turns False becomes a DeployFailed naming its reason and message. Requests go to the InferenceService's
cluster-local ``status.address.url``; Knative's activator buffers them across a scale from zero, so
acquire() has nothing to wait for. Training is KnativeJobs' (jobs.py); the two share one ClusterApi
(api.py), which this side closes.

A canary is KServe's own: the canary revision is applied with ``canaryTrafficPercent`` and KServe splits
the one address's traffic between it and the last revision that had all of it (``splits_traffic``), so
acquire() ignores which track the router would pick. Promote applies the canary's revision without the
field; dropping it applies the serving revision again, first pinned (canaryTrafficPercent 0) — without
that step Knative's "latest" target would send everything to the canary, the newest ready revision,
until the re-applied one is up. The backend remembers both revisions of each function for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from fnserve.backends.base import (
    BackendError,
    DeployFailed,
    Endpoint,
    FunctionNotFound,
    FunctionStatus,
    NoCanary,
    NoReadyReplica,
    ReplicaStatus,
    canary_percent,
)
from fnserve.backends.knative.api import ISVC, ClusterApi, condition
from fnserve.backends.knative.folders import folder_files
from fnserve.backends.knative.render import (
    FUNCTION_LABEL,
    MANAGED_BY,
    REVISION_LABEL,
    ClusterConfig,
    RenderError,
    config_from_settings,
    render_function,
)
from fnserve.records import Revision, Rollout
from fnserve.settings import Settings
from fnserve.tasks import BackgroundTasks, detached

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


@dataclass(frozen=True)
class _Applied:
    """A revision as applied, with its code ConfigMap, which stays while the revision may start pods."""

    revision: Revision
    code: str


def _revision_of(labels: dict[str, str]) -> int | None:
    """The fnserve revision a pod runs, from the label KServe copies from the InferenceService."""
    value = labels.get(REVISION_LABEL, "")
    return int(value) if value.isdigit() else None


class KnativeBackend:
    fetches_models = False
    shared = True
    splits_traffic = True

    def __init__(self, settings: Settings, api: ClusterApi) -> None:
        self.settings = settings
        self.config: ClusterConfig = config_from_settings(settings)
        self.namespace = api.namespace
        self.api = api
        self._objects: dict[str, dict[str, Any]] = {}
        self._main: dict[str, _Applied] = {}
        self._canaries: dict[str, tuple[_Applied, int]] = {}
        self._pods: dict[str, list[dict[str, Any]]] = {}
        self._tasks = BackgroundTasks()
        self._refresher: asyncio.Task[None] | None = None

    # -- functions -------------------------------------------------------------------------------------
    async def apply(self, revision: Revision, *, verify: bool = True, canary: int = 0) -> None:
        percent = canary_percent(canary)
        name = revision.name
        self._ensure_refresher()
        if percent:
            if name not in self._main:
                raise FunctionNotFound(f"function {name!r} serves no revision to run a canary beside")
            self._canaries[name] = (await self._put(revision, percent, verify), percent)
        else:
            self._main[name] = await self._replace(revision, verify)
            self._canaries.pop(name, None)
        self._collect(name)
        log.info("%s: revision %d applied as InferenceService %s/%s%s", name, revision.number, self.namespace, name,
                 f", a canary for {percent}% of requests" if percent else "")

    def follow(self, name: str, rollout: Rollout | None) -> None:
        """Another router applied this (one InferenceService for all): remember it as applied. Its code
        ConfigMaps are unknown here (they are named by the files' digest), so none is collected until
        this router applies the function itself."""
        if rollout is None:
            self._main.pop(name, None)
            self._canaries.pop(name, None)
            return
        self._main[name] = _Applied(rollout.current, "")
        if rollout.canary is None:
            self._canaries.pop(name, None)
        else:
            self._canaries[name] = (_Applied(rollout.canary, ""), rollout.percent)

    async def promote(self, name: str) -> None:
        """The canary's revision without canaryTrafficPercent: Knative keeps its revision (the template is
        the same) and moves all traffic to it."""
        canary = self._canary(name, "promote")
        self._main[name] = await self._put(canary.revision, None, verify=True)
        del self._canaries[name]
        self._collect(name)
        log.info("%s: canary revision %d promoted", name, canary.revision.number)

    async def drop_canary(self, name: str) -> None:
        canary = self._canary(name, "drop")
        main = self._main[name]
        await self._replace(main.revision, verify=True)
        del self._canaries[name]
        self._collect(name)
        log.info("%s: canary revision %d dropped; revision %d serves everything", name, canary.revision.number,
                 main.revision.number)

    def _canary(self, name: str, what: str) -> _Applied:
        if name not in self._main:
            raise FunctionNotFound(f"function {name!r} not found")
        if name not in self._canaries:
            raise NoCanary(f"function {name!r} has no canary to {what}")
        return self._canaries[name][0]

    async def _replace(self, revision: Revision, verify: bool) -> _Applied:
        """``revision`` with all the traffic. While a canary runs, a deploy is pinned first: applied with
        canaryTrafficPercent 0, the serving revision keeps all the traffic until the new one is Ready
        (else "latest" would mean the canary meanwhile); if it never is, the split goes back as it was."""
        canary = self._canaries.get(revision.name)
        if canary is not None and verify:
            try:
                await self._put(revision, 0, verify=True)
            except DeployFailed:
                with contextlib.suppress(BackendError):
                    await self._put(canary[0].revision, canary[1], verify=False)
                raise
        return await self._put(revision, None, verify)

    async def _put(self, revision: Revision, percent: int | None, verify: bool) -> _Applied:
        """Render and apply ``revision`` (with canaryTrafficPercent ``percent``); with ``verify``, wait
        until the InferenceService is Ready at the generation applied."""
        try:
            files = await asyncio.to_thread(folder_files, revision.source_dir)
            configmap, isvc = render_function(revision.function, files, self.config, revision.number, percent)
        except RenderError as exc:
            raise DeployFailed(f"{revision.name}: {exc}") from None
        await self.api.apply(configmap)
        applied = await self.api.apply(isvc)
        self._objects[revision.name] = applied
        if verify:
            generation = (applied.get("metadata") or {}).get("generation")
            self._objects[revision.name] = await self._wait_ready(revision.name, generation)
        return _Applied(revision, configmap["metadata"]["name"])

    def _collect(self, name: str) -> None:
        canary = self._canaries.get(name)
        keep = {applied.code for applied in (self._main.get(name), canary[0] if canary else None) if applied}
        if "" in keep:  # a revision another router applied: its ConfigMap's name is not known here
            return
        self._tasks.spawn(self._collect_code(name, keep))

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

    async def _collect_code(self, name: str, keep: set[str]) -> None:
        """Delete the function's older code ConfigMaps once a revision serves (each is content-named);
        ``keep`` those of the revisions that may still start pods (the serving one and the canary)."""
        with contextlib.suppress(Exception):
            listed = await self.api.call(self.api.core.list_namespaced_config_map, self.namespace,
                                         label_selector=f"{FUNCTION_LABEL}={name}")
            for item in listed.items:
                configmap = item.metadata.name if item.metadata else None
                if configmap is not None and configmap not in keep:
                    await self.api.call(self.api.core.delete_namespaced_config_map, configmap, self.namespace)

    async def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await self.api.call(self.api.custom.delete_namespaced_custom_object, *ISVC[:2], self.namespace, ISVC[2],
                                name)
        except ApiException:
            raise FunctionNotFound(f"function {name!r} not found in namespace {self.namespace}") from None
        self._objects.pop(name, None)
        self._main.pop(name, None)
        self._canaries.pop(name, None)
        self._tasks.spawn(self._collect_code(name, keep=set()))

    async def acquire(self, name: str, canary: bool = False) -> Endpoint:
        """The InferenceService's address, whichever track: Knative splits the traffic behind it."""
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
        main = self._main.get(name)
        number = main.revision.number if main is not None else None
        canary, percent = self._canaries.get(name, (None, 0))
        replicas = [ReplicaStatus(pod["name"], pod["revision"] or number or 0, pod["phase"].lower(), pod["ip"], None,
                                  0, pod["started"]) for pod in self._pods.get(name, [])]
        url = ((obj.get("status") or {}).get("url")) or ""
        return FunctionStatus(name, number, state == "ready", replicas, "" if state == "ready" else why,
                              desired=None, url=url, canary_revision=canary.revision.number if canary else None,
                              canary_percent=percent)

    def _ensure_refresher(self) -> None:
        if self._refresher is None:
            self._refresher = detached(self._refresh_forever())

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
                 "revision": _revision_of(p.metadata.labels or {}),
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

    def follow_logs(self, name: str, tail: int) -> AsyncIterator[bytes]:
        if name not in self._objects:
            raise FunctionNotFound(f"function {name!r} not found")
        return self._follow_logs(name, tail)

    async def _follow_logs(self, name: str, tail: int) -> AsyncIterator[bytes]:
        """``kubectl logs -f`` of the function's newest pods (three at most) running when asked: one
        following stream per pod, each read by a thread of its own — a read blocked until the pod writes
        must hold none of the worker threads the API calls share — and passed on line by line under a
        ``==> pod <==`` head. Ends when those pods end; pods started later are not followed (as kubectl's)."""
        listed = sorted(await self._function_pods(name), key=lambda pod: pod["started"])[-3:]
        if not listed:
            yield f"{name}: no pods (scaled to zero)\n".encode()
            return
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()
        streams: list[Any] = []
        stopping = threading.Event()

        def put(pod: str, data: bytes | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads any more
                loop.call_soon_threadsafe(lines.put_nowait, (pod, data))

        def pump(pod: str) -> None:
            pending = b""
            stream: Any = None  # a urllib3 response, unread
            try:
                stream = self.api.core.read_namespaced_pod_log(
                    pod, self.namespace, container="kserve-container", tail_lines=tail, follow=True,
                    _preload_content=False)  # read for as long as the pod lives, or until shut down
                streams.append(stream)
                for chunk in stream.stream(4096) if not stopping.is_set() else ():
                    pending += chunk
                    end = pending.rfind(b"\n") + 1  # whole lines only: pods' lines never interleave
                    if end:
                        put(pod, pending[:end])
                        pending = pending[end:]
                if pending:
                    put(pod, pending + b"\n")
            except Exception as exc:  # noqa: BLE001 — said in the stream, which the reader sees
                if not stopping.is_set():
                    put(pod, f"(log of {pod} ended: {exc})\n".encode())
            finally:
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()  # in this thread, which is the one reading it
                put(pod, None)

        for running in listed:
            threading.Thread(target=pump, args=(running["name"],), name=f"fnserve-follow-{running['name']}",
                             daemon=True).start()
        following, shown = len(listed), ""
        try:
            while following:
                pod, data = await lines.get()
                if data is None:
                    following -= 1
                    continue
                if pod != shown:
                    data, shown = f"==> {pod} <==\n".encode() + data, pod
                yield data
        finally:  # the reader left (or every pod ended): unblock and end the threads' reads
            stopping.set()
            for stream in list(streams):
                with contextlib.suppress(Exception):
                    getattr(stream, "shutdown", stream.close)()  # urllib3 ≥ 2.3: wakes a read in another thread

    async def start(self) -> None:
        self._ensure_refresher()

    async def close(self) -> None:
        """Stop refreshing and close the API client the jobs shared (they are closed first)."""
        if self._refresher is not None:
            self._refresher.cancel()
        self._tasks.cancel()
        with contextlib.suppress(Exception):
            await self.api.close()
