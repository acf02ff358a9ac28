"""Rendered cluster objects: valid against the upstream KServe / Knative CRDs and Kubernetes' own
schemas, and meaning what the manifest says (scale to zero, GPUs, Knative's annotation names)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fnserve.backends.knative.folders import folder_files, render_path
from fnserve.backends.knative.render import (
    ClusterConfig,
    RenderError,
    cloud_event,
    render_function,
    render_job,
    render_jobsink,
    render_s3_access,
)
from fnserve.manifest import load_function, load_training_job
from fnserve.settings import Settings
from tests.conftest import EXAMPLE, ROOT, edit_manifest, function_copy

SCHEMA_DIR = Path(os.environ.get("FNSERVE_SCHEMA_DIR", ROOT.parent / "shared" / "schemas"))
CRDS = {"InferenceService": "kserve/serving.kserve.io_inferenceservices.yaml", "JobSink": "knative/jobsink.yaml"}
KUBERNETES_VERSION = "1.33"
# every annotation Knative Serving reads on a revision that the renderer may write (knative.dev/docs)
KNATIVE_ANNOTATIONS = {
    "autoscaling.knative.dev/class", "autoscaling.knative.dev/target-utilization-percentage",
    "autoscaling.knative.dev/window", "autoscaling.knative.dev/panic-window-percentage",
    "autoscaling.knative.dev/panic-threshold-percentage", "autoscaling.knative.dev/scale-down-delay",
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period", "autoscaling.knative.dev/initial-scale",
    "serving.knative.dev/progress-deadline"}
needs_schemas = pytest.mark.skipif(not SCHEMA_DIR.is_dir(), reason=f"no CRD schemas at {SCHEMA_DIR} "
                                                                   "(set FNSERVE_SCHEMA_DIR to ../shared/schemas)")


@functools.lru_cache
def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    """Read once per test run: KServe's CRD is 2 MB of YAML (seconds to parse even with libyaml)."""
    crd = yaml.load((SCHEMA_DIR / CRDS[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = api_version.split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    return served["schema"]["openAPIV3Schema"]


@functools.lru_cache
def crd_validator(kind: str, api_version: str) -> Any:
    """A validator for the CRD, its schema checked once (checking KServe's takes seconds, validating an
    object against it a millisecond)."""
    schema = crd_schema(kind, api_version)
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def validate(body: dict[str, Any]) -> None:
    """CRD objects against their upstream CRD, everything else against Kubernetes' schemas (strict:
    unknown fields are errors). A JobSink's opaque spec.job is checked as the batch/v1 Job it becomes."""
    if body["kind"] in CRDS:
        crd_validator(body["kind"], body["apiVersion"]).validate(body)
        if body["kind"] == "JobSink":
            job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "run"}, **body["spec"]["job"]}
            kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
        return
    kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)


def gpu_function(tmp_path: Path) -> Path:
    fn = function_copy(EXAMPLE, tmp_path / "gpu", name="gpu-sentiment", skip=("model",),
                       resources={"cpu": "4", "memory": "8Gi", "gpu": 1})
    return fn


def walk(value: Any) -> list[str]:
    """Every key anywhere in a nested object."""
    if isinstance(value, dict):
        return [k for key, item in value.items() for k in (key, *walk(item))]
    if isinstance(value, list):
        return [k for item in value for k in walk(item)]
    return []


@needs_schemas
def test_every_example_renders_to_objects_the_schemas_accept(tmp_path: Path) -> None:
    config = ClusterConfig(s3_endpoint="minio.storage.svc:9000", s3_use_https=False, s3_region="us-east-1")
    paths = [*sorted(ROOT.glob("functions/*/function.yaml")), *sorted(ROOT.glob("functions/*/train.yaml")),
             gpu_function(tmp_path)]
    kinds = []
    for path in paths:
        objects, _ = render_path(path, config)
        for body in objects:
            validate(body)
            kinds.append(body["kind"])
        if path.name == "train.yaml":
            for body in render_path(path, config, jobsink=False)[0]:
                validate(body)
                kinds.append(body["kind"])
    for body in render_s3_access(config, "key", "secret"):
        validate(body)
        kinds.append(body["kind"])
    assert {"InferenceService", "ConfigMap", "JobSink", "Job", "ServiceAccount", "Secret"} <= set(kinds)


@needs_schemas
def test_the_schemas_do_catch_mistakes() -> None:
    """The validation above is not vacuous: a misspelt or mistyped field fails it."""
    configmap, isvc = render_function(load_function(EXAMPLE), folder_files(EXAMPLE), ClusterConfig())
    isvc["spec"]["predictor"]["minReplicas"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate(isvc)
    configmap["immutible"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(configmap)


@needs_schemas
def test_a_canary_is_the_revision_plus_kserve_s_traffic_split_where_the_crd_has_it() -> None:
    function, files = load_function(EXAMPLE), folder_files(EXAMPLE)
    _, plain = render_function(function, files, ClusterConfig(), 2)
    _, canary = render_function(function, files, ClusterConfig(), 2, canary=10)
    _, pinned = render_function(function, files, ClusterConfig(), 2, canary=0)
    schema = crd_schema("InferenceService", canary["apiVersion"])
    assert "canaryTrafficPercent" in schema["properties"]["spec"]["properties"]["predictor"]["properties"]
    validate(canary)
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert pinned["spec"]["predictor"]["canaryTrafficPercent"] == 0  # everything on the previous revision
    assert "canaryTrafficPercent" not in walk(plain)
    del canary["spec"]["predictor"]["canaryTrafficPercent"]
    assert canary == plain  # the split is all a canary adds: promoting it leaves Knative's revision as it is
    canary["spec"]["predictor"]["canaryTrafficPercent"] = "10%"
    with pytest.raises(jsonschema.ValidationError):
        validate(canary)
    with pytest.raises(RenderError, match="canaryTrafficPercent: a percent from 0 to 100, not 101"):
        render_function(function, files, ClusterConfig(), 2, canary=101)


def test_cpu_function_scales_to_zero_in_knative_mode_without_gpu_fields() -> None:
    _, isvc = render_function(load_function(EXAMPLE), folder_files(EXAMPLE), ClusterConfig())
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == 0 and predictor["maxReplicas"] == 2 and predictor["scaleTarget"] == 8
    assert predictor["scaleMetric"] == "concurrency" and predictor["timeout"] == 30
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert {"name": "STORAGE_URI", "value": "s3://fnserve-artifacts/sentiment/latest"} in container["env"]
    assert not {"nvidia.com/gpu", "tolerations", "nodeSelector"} & set(walk(isvc))
    assert annotations["serving.knative.dev/progress-deadline"] == "600s"
    knative = {k for k in annotations if "knative.dev/" in k}
    assert knative <= KNATIVE_ANNOTATIONS, knative - KNATIVE_ANNOTATIONS
    assert annotations["autoscaling.knative.dev/window"] == "30s"
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "10s"


def test_gpu_function_gets_limits_placement_and_a_long_progress_deadline(tmp_path: Path) -> None:
    fn = gpu_function(tmp_path)
    _, isvc = render_function(load_function(fn), folder_files(fn), ClusterConfig())
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == ClusterConfig().gpu_runtime_image
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert predictor["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert isvc["metadata"]["annotations"]["serving.knative.dev/progress-deadline"] == "1800s"


def test_the_code_configmap_carries_the_folder_and_the_manifest_as_deployed() -> None:
    function = load_function(EXAMPLE)
    configmap, isvc = render_function(function, {**folder_files(EXAMPLE), "model/model.onnx": b"\x00big"},
                                      ClusterConfig())
    assert configmap["immutable"] is True and "model__model.onnx" not in configmap["data"]
    assert yaml.safe_load(configmap["data"]["function.yaml"]) == function.to_dict()
    (volume,) = isvc["spec"]["predictor"]["volumes"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert {"key": "data__reviews.csv", "path": "data/reviews.csv"} in volume["configMap"]["items"]
    other, _ = render_function(function, {**folder_files(EXAMPLE), "handler.py": b"# changed"}, ClusterConfig())
    assert other["metadata"]["name"] != configmap["metadata"]["name"]  # new code, new ConfigMap


def test_what_cannot_run_in_a_cluster_is_refused_with_a_reason(tmp_path: Path) -> None:
    fn = function_copy(EXAMPLE, tmp_path / "local", skip=("model",), model={"uri": "./model"})
    with pytest.raises(RenderError, match=r"spec.model.uri: ./model is a folder on this machine"):
        render_function(load_function(fn), folder_files(fn), ClusterConfig())
    edit_manifest(fn, model={"uri": "s3://bucket-a/m"}, scaling={"stableWindow": "2s"})
    with pytest.raises(RenderError, match=r"stableWindow: Knative accepts 6s to 1h \(got 2s\)"):
        render_function(load_function(fn), folder_files(fn), ClusterConfig())
    with pytest.raises(RenderError, match="more than a ConfigMap carries"):
        render_function(load_function(EXAMPLE), {"weights.bin": b"x" * 2**20}, ClusterConfig())


def test_training_job_as_job_jobsink_and_event() -> None:
    job = load_training_job(EXAMPLE)
    files = folder_files(EXAMPLE)
    *_, plain = render_job(job, files, ClusterConfig(), "20261123-101502-123-a9f4", {"epochs": 5})
    assert plain["metadata"]["name"] == "sentiment-train-20261123-101502-123-a9f4"
    spec = plain["spec"]
    assert spec["ttlSecondsAfterFinished"] == 86400 and spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600 + 300
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "fnserve.jobs.run"]
    assert container["args"][-4:] == ["--run-id", "20261123-101502-123-a9f4", "--params", '{"epochs": 5}']
    assert spec["template"]["spec"]["restartPolicy"] == "Never"

    *_, sink = render_jobsink(job, files, ClusterConfig())
    assert sink["spec"]["job"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--event"
    event = cloud_event(job, ClusterConfig(), "20261123-101502-123-a9f4")
    assert event["id"] == event["data"]["runId"] == "20261123-101502-123-a9f4"
    assert event["data"]["params"] == {"epochs": 60, "hidden": 32, "seed": 7} and event["specversion"] == "1.0"


def test_checked_in_examples_are_current(tmp_path: Path) -> None:
    """manifests/examples is what `make render` writes; regenerate it when this fails."""
    fresh = tmp_path / "examples"
    for folder in sorted(p.parent for p in ROOT.glob("functions/*/function.yaml")):
        paths = [folder, *([folder / "train.yaml"] if (folder / "train.yaml").exists() else [])]
        subprocess.run([sys.executable, "-m", "fnserve.cli", "render", "--defaults", *map(str, paths),
                        "-o", str(fresh / folder.name)], check=True, capture_output=True)
    expected = {p.relative_to(fresh): p.read_text() for p in fresh.rglob("*.yaml")}
    current = {p.relative_to(ROOT / "manifests" / "examples"): p.read_text()
               for p in (ROOT / "manifests" / "examples").rglob("*.yaml")}
    assert current == expected, "manifests/examples is stale: run `make render`"


def test_render_command_prints_yaml_and_notes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fnserve.cli", "render", "--defaults", str(EXAMPLE)],
                          capture_output=True, text=True, check=True)
    kinds = [doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc]
    assert kinds == ["ConfigMap", "InferenceService"]
    assert "ends in 'latest'" in done.stderr
    fn = function_copy(EXAMPLE, tmp_path / "local", skip=("model",), model={"uri": "./model"})
    bad = subprocess.run([sys.executable, "-m", "fnserve.cli", "render", str(fn)], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "is a folder on this machine" in bad.stderr


def kustomized(folder: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization's resources, as written (its generators aside)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((folder / name).read_text())
            if doc]


def the(objects: list[dict[str, Any]], kind: str, name: str = "fnserve-router") -> dict[str, Any]:
    (body,) = [b for b in objects if b["kind"] == kind and b["metadata"]["name"] == name]
    return body


def test_base_manifests_are_valid_and_the_router_may_touch_only_its_namespace() -> None:
    objects = kustomized(ROOT / "manifests" / "base")
    for body in objects:
        kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
    kinds = {body["kind"] for body in objects}
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Role",
            "RoleBinding", "ServiceAccount"} <= kinds
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    (role,) = [b for b in objects if b["kind"] == "Role"]
    granted = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert ("serving.kserve.io", "inferenceservices") in granted and ("sinks.knative.dev", "jobsinks") in granted
    assert ("batch", "jobs") in granted and not any("*" in pair for pair in granted)
    router = the(objects, "Deployment")
    assert router["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["up", "--backend", "knative"]
    features = yaml.safe_load((ROOT / "manifests" / "knative" / "config-features.yaml").read_text())["data"]
    assert {f"kubernetes.podspec-{f}" for f in ("nodeselector", "tolerations", "affinity")} == set(features)


def test_the_router_runs_as_replicas_that_keep_nothing_on_a_volume() -> None:
    """Many routers: state from PostgreSQL, counters in Redis, pepper and admin key from read-only Secrets;
    scaled by an HPA on CPU, drained one at a time, and every FNSERVE_* it sets a real setting."""
    base = ROOT / "manifests" / "base"
    objects = kustomized(base)
    router = the(objects, "Deployment")
    pod = router["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert router["spec"]["replicas"] == 3 and "PersistentVolumeClaim" not in {b["kind"] for b in objects}
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    env = {e["name"]: e for e in container["env"]}
    assert env["FNSERVE_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "fnserve-database", "key": "url"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for variable, secret in (("FNSERVE_PEPPER_FILE", "fnserve-pepper"), ("FNSERVE_ADMIN_KEY_FILE", "fnserve-admin-key")):
        (mount,) = [m for m in container["volumeMounts"] if env[variable]["value"].startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"] == {"secretName": secret, "defaultMode": 0o400}

    literals = dict(item.split("=", 1) for item in
                    yaml.safe_load((base / "kustomization.yaml").read_text())["configMapGenerator"][0]["literals"])
    redis_host = literals["FNSERVE_REDIS_URL"].split("//")[1].split(":")[0]
    assert the(objects, "Service", redis_host)["spec"]["ports"][0]["port"] == 6379
    settings = {f"FNSERVE_{f.name.upper()}" for f in fields(Settings)}
    assert {*literals, *env} <= settings, {*literals, *env} - settings

    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"]["cpu"]  # what the HPA's utilization is a share of
    hpa = the(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fnserve-router"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    pdb = the(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= router["spec"]["template"]["metadata"]["labels"].items()


def test_the_secrets_the_router_needs_are_made_by_the_documented_commands() -> None:
    """Secrets are not committed: each one the Deployment reads and kustomize does not generate has its
    `kubectl create secret` line in docs/cluster.md."""
    base = ROOT / "manifests" / "base"
    pod = the(kustomized(base), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    used = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    used |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    generated = {g["name"] for g in yaml.safe_load((base / "kustomization.yaml").read_text())["secretGenerator"]}
    guide = (ROOT / "docs" / "cluster.md").read_text()
    assert used - generated == {"fnserve-database", "fnserve-pepper", "fnserve-admin-key"}
    for secret in used - generated:
        assert f"kubectl -n fnserve create secret generic {secret} " in guide, secret


def test_the_ingress_example_is_valid_and_serves_the_router_over_tls() -> None:
    objects = kustomized(ROOT / "manifests" / "ingress")
    for body in objects:
        kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
    ingress = the(objects, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1" and ingress["spec"]["ingressClassName"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] == "fnserve-tls" and tls["hosts"] == [r["host"] for r in ingress["spec"]["rules"]]
    service = the(kustomized(ROOT / "manifests" / "base"), "Service")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
