"""Function and TrainingJob manifests → the Kubernetes objects a KServe + Knative cluster runs them as.

Pure functions over plain data: no cluster, no I/O. The same objects are applied by the cluster
backend and printed by ``fnserve render``, and the tests validate them against the upstream CRD and
Kubernetes schemas.

A function becomes a ``serving.kserve.io/v1beta1`` InferenceService in Knative mode (set explicitly:
KServe's compiled-in default is now the raw Deployment mode, which cannot scale to zero) with a
custom predictor container ``kserve-container`` running ``runtimes.server``. Everything KServe has a
field for goes in the field (minReplicas, maxReplicas, scaleTarget, scaleMetric,
containerConcurrency, timeout, and a canary's canaryTrafficPercent: KServe then splits the traffic
between this revision and the last one that had all of it); the other Knative knobs go in
``autoscaling.knative.dev/*`` annotations, which KServe passes down to the revision. The model
arrives through ``STORAGE_URI`` (KServe's storage initializer downloads it to /mnt/models); the
function's code arrives as an immutable ConfigMap named after its content. A training job becomes a ``batch/v1`` Job running the
job wrapper, wrapped in a Knative Eventing JobSink when the cluster has one, plus the CloudEvent that
starts one run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnserve.manifest import Function, TrainingJob
from fnserve.replica_contract import ReplicaArgs

MANAGED_BY = {"app.kubernetes.io/managed-by": "fnserve"}
FUNCTION_LABEL = "fnserve.dev/function"
REVISION_LABEL = "fnserve.dev/revision"
"""On the InferenceService, and so (KServe copies its labels into the revision template) on its pods."""
JOB_LABEL = "fnserve.dev/job"
CODE_DIR = "/opt/fnserve/function"
MODEL_DIR = "/mnt/models"
EVENT_TYPE = "dev.fnserve.training.run"
CONFIGMAP_LIMIT = 900 * 1024
"""A ConfigMap holds at most 1 MiB; leave room for keys and metadata."""
_SKIP_PARTS = {"__pycache__", ".git", "model", ".ipynb_checkpoints"}
TELEMETRY_CONFIGMAP = "fnserve-telemetry"
"""ConfigMap of OTEL_* variables (endpoint, headers, resource attributes) for routers and replicas."""


class RenderError(Exception):
    """The manifest cannot run in a cluster as written; the message says what to change."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how objects are rendered; the cluster backend fills it from FNSERVE_CLUSTER_* settings."""

    namespace: str = "fnserve"
    runtime_image: str = "ghcr.io/fnserve/runtime-cpu:0.1.0"
    gpu_runtime_image: str = "ghcr.io/fnserve/runtime-cuda:0.1.0"
    artifact_root: str = "s3://fnserve-artifacts"
    """Where artifacts:// URIs point in the cluster; must be s3://."""
    deployment_mode: str = "Knative"
    """KServe ≥ 0.17 spells Knative mode "Knative"; older releases "Serverless" (still accepted)."""
    service_account: str = "fnserve-models"
    s3_secret: str = "fnserve-s3"
    s3_endpoint: str | None = None
    """host[:port] of a non-AWS S3 endpoint, as KServe's annotation wants it (no scheme)."""
    s3_use_https: bool = True
    s3_verify_ssl: bool = True
    s3_region: str | None = None
    gpu_node_selector: Mapping[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Mapping[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    progress_deadline: str = "600s"
    gpu_progress_deadline: str = "1800s"
    """A GPU node may take many minutes to provision; Knative's default (600 s) kills the revision first."""
    job_ttl_seconds: int = 86400
    job_deadline_slack: int = 300
    """activeDeadlineSeconds = the job's timeout + this: the wrapper enforces the timeout itself, the
    deadline is the backstop (and covers image pulls and GPU provisioning)."""


def _meta(name: str, config: ClusterConfig, labels: Mapping[str, str] | None = None,
          annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": config.namespace, "labels": {**MANAGED_BY, **(labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _seconds(value: float) -> str:
    return f"{value:g}s"


def storage_uri(uri: str, config: ClusterConfig) -> str:
    """Where the storage initializer downloads the model from."""
    if uri.startswith("artifacts://"):
        return config.artifact_root.rstrip("/") + "/" + uri[len("artifacts://"):].strip("/")
    if uri.startswith("s3://"):
        return uri.rstrip("/")
    raise RenderError(f"spec.model.uri: {uri} is a folder on this machine; in a cluster the model must come "
                      f"from object storage (artifacts://<function>/<run> or s3://…)")


# -- function code ----------------------------------------------------------------------------------
def code_configmap(name: str, files: Mapping[str, bytes], config: ClusterConfig,
                   labels: Mapping[str, str]) -> dict[str, Any]:
    """The function's folder as an immutable ConfigMap named after its content.

    ConfigMap keys cannot hold '/', so each file gets a flat key and an ``items`` path (see volume()).
    """
    chosen = {path: data for path, data in sorted(files.items())
              if not any(part in _SKIP_PARTS or part.startswith(".") for part in path.split("/"))}
    total = sum(len(data) for data in chosen.values())
    if total > CONFIGMAP_LIMIT:
        raise RenderError(f"{name}: the function's folder holds {total} bytes, more than a ConfigMap carries "
                          f"({CONFIGMAP_LIMIT}); put the code in a container image (spec.image) or slim the folder")
    digest = hashlib.sha256(json.dumps({p: hashlib.sha256(d).hexdigest() for p, d in chosen.items()}).encode())
    data, binary = {}, {}
    for path, content in chosen.items():
        key = _key(path)
        try:
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            binary[key] = base64.b64encode(content).decode()
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": _meta(f"{name}-code-{digest.hexdigest()[:10]}", config, labels),
                            "immutable": True, "data": data}
    if binary:
        body["binaryData"] = binary
    return body


def _key(path: str) -> str:
    return path.replace("/", "__")


def _code_volume(configmap: dict[str, Any]) -> dict[str, Any]:
    keys = sorted([*configmap.get("data", {}), *configmap.get("binaryData", {})])
    return {"name": "function-code", "configMap": {
        "name": configmap["metadata"]["name"],
        "items": [{"key": key, "path": key.replace("__", "/")} for key in keys]}}


def _resources(cpu: str | None, memory: str | None, gpu: int) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    if gpu:
        limits["nvidia.com/gpu"] = gpu  # extended resources go in limits (requests default to them)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _placement(gpu: int, config: ClusterConfig) -> dict[str, Any]:
    if not gpu:
        return {}
    return {"nodeSelector": dict(config.gpu_node_selector), "tolerations": [dict(t) for t in config.gpu_tolerations]}


# -- functions ----------------------------------------------------------------------------------------
def render_function(function: Function, files: Mapping[str, bytes], config: ClusterConfig,
                    revision: int | None = None, canary: int | None = None) -> list[dict[str, Any]]:
    """The ConfigMap with the function's code, then its InferenceService.

    ``files`` is the function's folder (relative path → bytes); its function.yaml is replaced by the
    manifest as given, so the replica reads exactly what was deployed (model URI pinned). ``canary``
    (0..100) renders it as a canary taking that percent of the traffic from the revision that had all
    of it; 0 pins everything to that revision while this one starts.
    """
    import yaml

    if canary is not None and not 0 <= canary <= 100:
        raise RenderError(f"canaryTrafficPercent: a percent from 0 to 100, not {canary}")
    name, spec = function.name, function.spec
    labels = {FUNCTION_LABEL: name, **({REVISION_LABEL: str(revision)} if revision else {})}
    code = {**files, "function.yaml": yaml.safe_dump(function.to_dict(), sort_keys=False).encode()}
    configmap = code_configmap(name, code, config, labels)
    scaling = spec.scaling
    if scaling.stable_window < 6:
        raise RenderError("spec.scaling.stableWindow: Knative accepts 6s to 1h "
                          f"(got {_seconds(scaling.stable_window)})")
    annotations = {
        "serving.kserve.io/deploymentMode": config.deployment_mode,
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/target-utilization-percentage": f"{scaling.target_utilization_percentage:g}",
        "autoscaling.knative.dev/window": _seconds(scaling.stable_window),
        "autoscaling.knative.dev/panic-window-percentage": f"{scaling.panic_window_percentage:g}",
        "autoscaling.knative.dev/panic-threshold-percentage": f"{scaling.panic_threshold_percentage:g}",
        "autoscaling.knative.dev/scale-down-delay": _seconds(scaling.scale_down_delay),
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": _seconds(scaling.scale_to_zero_grace_period),
        "serving.knative.dev/progress-deadline": (config.gpu_progress_deadline if spec.resources.gpu
                                                  else config.progress_deadline),
        "fnserve.dev/model-uri": spec.model.uri,
        **function.metadata.annotations,
    }
    if scaling.initial_scale is not None:
        annotations["autoscaling.knative.dev/initial-scale"] = str(scaling.initial_scale)
    gpu = spec.resources.gpu
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": config.gpu_runtime_image if gpu else config.runtime_image,
        "args": ReplicaArgs(Path(CODE_DIR), Path(MODEL_DIR), Path(CODE_DIR, "function.yaml"), 8080,
                            "0.0.0.0").to_argv(),
        "env": [{"name": "STORAGE_URI", "value": storage_uri(spec.model.uri, config)},
                {"name": "FNSERVE_LOG_FORMAT", "value": "json"}],  # what a cluster's log pipeline parses
        # the OTEL_* settings every replica and router shares (docs/operations.md); none if it does not exist
        "envFrom": [{"configMapRef": {"name": TELEMETRY_CONFIGMAP, "optional": True}}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{name}", "port": 8080}},
        "volumeMounts": [{"name": "function-code", "mountPath": CODE_DIR, "readOnly": True}],
    }
    resources = _resources(spec.resources.cpu, spec.resources.memory, gpu)
    if resources:
        container["resources"] = resources
    predictor: dict[str, Any] = {
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas or 0,  # 0 = no upper bound, as in KServe
        "scaleTarget": scaling.scale_target,
        "scaleMetric": "concurrency",
        "containerConcurrency": scaling.container_concurrency,
        "timeout": spec.timeout,
        **({"canaryTrafficPercent": canary} if canary is not None else {}),
        "serviceAccountName": config.service_account,
        **_placement(gpu, config),
        "containers": [container],
        "volumes": [_code_volume(configmap)],
    }
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _meta(name, config, {**function.metadata.labels, **labels}, annotations),
            "spec": {"predictor": predictor}}
    return [configmap, isvc]


def render_s3_access(config: ClusterConfig, access_key_id: str = "", secret_access_key: str = "") -> list[dict[str, Any]]:
    """The ServiceAccount KServe's storage initializer and the jobs use, and its S3 Secret.

    Empty keys are allowed: boto3 then falls back to the pod's own identity (IRSA, workload identity).
    """
    annotations = {"serving.kserve.io/s3-usehttps": "1" if config.s3_use_https else "0",
                   "serving.kserve.io/s3-verifyssl": "1" if config.s3_verify_ssl else "0"}
    if config.s3_endpoint:
        annotations["serving.kserve.io/s3-endpoint"] = config.s3_endpoint
    if config.s3_region:
        annotations["serving.kserve.io/s3-region"] = config.s3_region
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": _meta(config.s3_secret, config, annotations=annotations),
              "stringData": {"AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret_access_key}}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(config.service_account, config),
               "secrets": [{"name": config.s3_secret}]}
    return [account, secret]


# -- training jobs -----------------------------------------------------------------------------------
def job_output(job: TrainingJob, config: ClusterConfig) -> str:
    output = job.spec.output or f"{config.artifact_root.rstrip('/')}/{job.spec.function}"
    if not output.startswith("s3://"):
        raise RenderError(f"spec.output: {output} is a folder on this machine; in a cluster runs go to s3://")
    return output


def _job_spec(job: TrainingJob, config: ClusterConfig, configmap: dict[str, Any] | None,
              extra_args: list[str]) -> dict[str, Any]:
    spec = job.spec
    gpu = spec.resources.gpu
    env = [{"name": "FNSERVE_ARTIFACT_ROOT", "value": config.artifact_root},
           {"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "FNSERVE_LOG_FORMAT", "value": "json"}]
    if config.s3_endpoint:
        scheme = "https" if config.s3_use_https else "http"
        env.append({"name": "FNSERVE_S3_ENDPOINT_URL", "value": f"{scheme}://{config.s3_endpoint}"})
    if config.s3_region:
        env.append({"name": "FNSERVE_S3_REGION", "value": config.s3_region})
    container: dict[str, Any] = {
        "name": "train",
        "image": spec.image or (config.gpu_runtime_image if gpu else config.runtime_image),
        "command": ["python", "-m", "fnserve.jobs.run"],
        "args": ["--manifest", f"{CODE_DIR}/train.yaml", "--function-dir", CODE_DIR,
                 "--output", job_output(job, config), *extra_args],
        "env": env,
        "envFrom": [{"secretRef": {"name": config.s3_secret, "optional": True}}],
    }
    resources = _resources(spec.resources.cpu, spec.resources.memory, gpu)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {"restartPolicy": "Never", "serviceAccountName": config.service_account,
                           **_placement(gpu, config), "containers": [container]}
    if configmap is not None:
        container["volumeMounts"] = [{"name": "function-code", "mountPath": CODE_DIR, "readOnly": True}]
        pod["volumes"] = [_code_volume(configmap)]
    return {"ttlSecondsAfterFinished": config.job_ttl_seconds,
            "backoffLimit": 0,  # a failed run is a result, not something to retry under the same run id
            "activeDeadlineSeconds": int(spec.timeout) + config.job_deadline_slack,
            "template": {"metadata": {"labels": {**MANAGED_BY, JOB_LABEL: job.name, FUNCTION_LABEL: spec.function}},
                         "spec": pod}}


def _job_code(job: TrainingJob, files: Mapping[str, bytes], config: ClusterConfig) -> dict[str, Any] | None:
    """The job's folder as a ConfigMap, unless its image carries the code (spec.image)."""
    if job.spec.image:
        return None
    import yaml

    code = {**files, "train.yaml": yaml.safe_dump(job.to_dict(), sort_keys=False).encode()}
    return code_configmap(job.name, code, config, {JOB_LABEL: job.name})


def render_job(job: TrainingJob, files: Mapping[str, bytes], config: ClusterConfig, run_id: str,
               params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One run as a plain batch/v1 Job (clusters without Knative Eventing): [ConfigMap], Job."""
    configmap = _job_code(job, files, config)
    args = ["--run-id", run_id, "--params", json.dumps(dict(params if params is not None else job.spec.params))]
    body = {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _meta(run_job_name(job.name, run_id), config, {JOB_LABEL: job.name,
                                                                       FUNCTION_LABEL: job.spec.function}),
            "spec": _job_spec(job, config, configmap, args)}
    return [*([configmap] if configmap else []), body]


def run_job_name(job_name: str, run_id: str) -> str:
    """A Job name per run: DNS-1123, at most 63 characters."""
    return f"{job_name[:63 - 25]}-{run_id}".lower()


def render_jobsink(job: TrainingJob, files: Mapping[str, bytes], config: ClusterConfig) -> list[dict[str, Any]]:
    """The JobSink that starts one Job per CloudEvent: [ConfigMap], JobSink. Run id and parameters
    come from the event, which Knative mounts into the pod (K_EVENT_PATH); see cloud_event()."""
    configmap = _job_code(job, files, config)
    sink = {"apiVersion": "sinks.knative.dev/v1alpha1", "kind": "JobSink",
            "metadata": _meta(job.name, config, {JOB_LABEL: job.name, FUNCTION_LABEL: job.spec.function}),
            "spec": {"job": {"metadata": {"labels": {**MANAGED_BY, JOB_LABEL: job.name}},
                             "spec": _job_spec(job, config, configmap, ["--event"])}}}
    return [*([configmap] if configmap else []), sink]


def event_source(job: TrainingJob, config: ClusterConfig) -> str:
    """No '/': Knative's receiver puts the source unescaped into the path of its status URL."""
    return f"fnserve.{config.namespace}.{job.name}"


def jobsink_job_name(jobsink: str, source: str, event_id: str) -> str:
    """The name Knative's job-sink receiver gives the Job of one event: kmeta.ChildName(jobsink + "-",
    md5(source + id)), so the router can find a run's Job without listing."""
    parent, suffix = f"{jobsink}-", hashlib.md5((source + event_id).encode()).hexdigest()
    longest, head = 63, 63 - 32
    if len(parent) <= longest - len(suffix):
        return parent + suffix
    if head - len(suffix) <= 0:  # the suffix alone is too long to keep: hash parent and suffix together
        name = parent[:head] + hashlib.md5((parent + suffix).encode()).hexdigest()
        name += suffix[:max(0, longest - len(name))]
        return name.rstrip("-.")
    return parent[:head - len(suffix)] + hashlib.md5(parent.encode()).hexdigest() + suffix


def cloud_event(job: TrainingJob, config: ClusterConfig, run_id: str,
                params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The structured-mode CloudEvent that asks a JobSink for one run. Its id is the run id, so posting
    it twice starts one Job (JobSink names Jobs after source + id)."""
    return {"specversion": "1.0", "id": run_id, "source": event_source(job, config),
            "type": EVENT_TYPE, "subject": job.spec.function, "datacontenttype": "application/json",
            "data": {"runId": run_id, "params": dict(params if params is not None else job.spec.params)}}


def config_from_settings(settings: Any) -> ClusterConfig:
    """The cluster half of fnserve's Settings (FNSERVE_CLUSTER_*, FNSERVE_ARTIFACT_ROOT, FNSERVE_S3_*)."""
    from urllib.parse import urlparse

    endpoint = urlparse(settings.s3_endpoint_url) if settings.s3_endpoint_url else None
    selector = dict(pair.split("=", 1) for pair in settings.cluster_gpu_node_selector.split(",") if "=" in pair)
    tolerations = ({"key": settings.cluster_gpu_toleration, "operator": "Exists", "effect": "NoSchedule"},) \
        if settings.cluster_gpu_toleration else ()
    root = settings.artifact_root if (settings.artifact_root or "").startswith("s3://") else ClusterConfig.artifact_root
    return ClusterConfig(namespace=settings.cluster_namespace, runtime_image=settings.cluster_runtime_image,
                         gpu_runtime_image=settings.cluster_gpu_runtime_image, artifact_root=root,
                         deployment_mode=settings.cluster_deployment_mode,
                         s3_endpoint=endpoint.netloc if endpoint else None,
                         s3_use_https=endpoint.scheme != "http" if endpoint else True,
                         s3_region=settings.s3_region, gpu_node_selector=selector, gpu_tolerations=tolerations)
