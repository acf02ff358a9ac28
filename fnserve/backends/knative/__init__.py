"""The cluster backend: KServe InferenceServices on Knative, training through Jobs / JobSinks."""

from __future__ import annotations

from typing import Any

from fnserve.backends.knative.api import ClusterApi, api_client
from fnserve.backends.knative.cluster import KnativeBackend
from fnserve.backends.knative.jobs import KnativeJobs
from fnserve.backends.knative.render import config_from_settings
from fnserve.settings import Settings
from fnserve.state import StateStore

__all__ = ["KnativeBackend", "KnativeJobs", "create"]


def create(settings: Settings, state: StateStore, client: Any = None) -> tuple[KnativeBackend, KnativeJobs]:
    """Serving and Training on the cluster, sharing one API client (``client``: a kubernetes ApiClient;
    default: from FNSERVE_CLUSTER_API_URL, the pod's service account or ~/.kube/config). The serving
    side closes the client, so close the jobs first."""
    api = ClusterApi(client or api_client(settings), config_from_settings(settings).namespace)
    return KnativeBackend(settings, api), KnativeJobs(settings, state, api)
