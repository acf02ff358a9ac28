"""ClusterApi: the one Kubernetes API client that the cluster's Serving and Training share.

The kubernetes client is synchronous: every call runs in a worker thread, never on the event loop, and
its failures become ClusterError (502) with the API server's own message — except 404, which callers
read as "not there". Objects are written with server-side apply under the field manager ``fnserve``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fnserve.backends.base import BackendError
from fnserve.settings import Settings

if TYPE_CHECKING:
    from urllib3 import BaseHTTPResponse

APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "fnserve"
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
JOBSINK = ("sinks.knative.dev", "v1alpha1", "jobsinks")
_PLURALS = {"InferenceService": ISVC, "JobSink": JOBSINK}
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


def message(exc: Exception) -> str:
    """The API server's message in an ApiException, else the error's reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, (str, bytes, bytearray)):
        try:
            return str(json.loads(body)["message"])
        except (TypeError, ValueError, KeyError):
            pass
    return str(getattr(exc, "reason", None) or exc)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type ``kind`` of an object (empty when it has none)."""
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item
    return {}


class ClusterApi:
    """Typed and untyped API groups of one ApiClient in one namespace, called off the event loop."""

    def __init__(self, client: Any, namespace: str) -> None:
        from kubernetes import client as k8s

        self.client = client
        self.namespace = namespace
        self.custom = k8s.CustomObjectsApi(client)
        self.core = k8s.CoreV1Api(client)
        self.batch = k8s.BatchV1Api(client)

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise
            raise ClusterError(f"the Kubernetes API answered {exc.status}: {message(exc)}") from None
        except (HTTPError, OSError) as exc:
            raise ClusterError(f"cannot reach the Kubernetes API: {exc}") from None

    def plain(self, obj: Any) -> dict[str, Any]:
        """A typed client object as the plain dict the API server sent."""
        return self.client.sanitize_for_serialization(obj)

    def _apply_sync(self, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply one object (field manager fnserve, taking over conflicting fields)."""
        name, kind = body["metadata"]["name"], body["kind"]
        if kind == "ConfigMap":
            configmap = self.core.patch_namespaced_config_map(name, self.namespace, body, field_manager=FIELD_MANAGER,
                                                              force=True, _content_type=APPLY)
            return self.plain(configmap)
        if kind == "Job":
            job = self.batch.patch_namespaced_job(name, self.namespace, body, field_manager=FIELD_MANAGER,
                                                  force=True, _content_type=APPLY)
            return self.plain(job)
        # the untyped call returns None for 201 Created: read the raw answer instead
        group, version, plural = _PLURALS[kind]
        raw = self.custom.patch_namespaced_custom_object(group, version, self.namespace, plural, name, body,
                                                         field_manager=FIELD_MANAGER, force=True,
                                                         _content_type=APPLY, _preload_content=False)
        # declared ``object``: without preloading, the client hands back urllib3's response itself
        return json.loads(cast("BaseHTTPResponse", raw).data)

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return await self.call(self._apply_sync, body)
        except ApiException as exc:  # 404 on apply: the API itself is missing
            raise ClusterError(f"the cluster has no {body['kind']} API ({body['apiVersion']}): is "
                               f"{'KServe' if body['kind'] == 'InferenceService' else 'Knative Eventing'} "
                               f"installed? ({message(exc)})") from None

    async def get(self, group_version_plural: tuple[str, str, str], name: str) -> dict[str, Any] | None:
        """A custom object, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        group, version, plural = group_version_plural
        try:
            obj = await self.call(self.custom.get_namespaced_custom_object, group, version, self.namespace,
                                  plural, name)
        except ApiException:
            return None
        return cast("dict[str, Any]", obj)  # declared ``object``: an untyped call's answer is the JSON object

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
