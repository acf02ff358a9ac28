"""The Kubernetes API stand-in (tests/kube_standin.py), driven only through the official ``kubernetes`` client (and
urllib for Knative's job-sink receiver, as the backend posts CloudEvents): proof that the calls the Knative backend
makes work against it, and that it answers them as a real cluster would."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import pytest
from kubernetes import client, watch

from tests.kube_standin import (
    JOB_SINK_ID_LABEL,
    JOB_SINK_NAME_LABEL,
    KubeApiStandIn,
    client_configuration,
    jobsink_job_name,
    wait_until,
)

APPLY = "application/apply-patch+yaml"
NS = "fnserve"
KSERVE = ("serving.kserve.io", "v1beta1")
SSA = {"field_manager": "fnserve", "force": True, "_content_type": APPLY}


@pytest.fixture
def api() -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(ready_delay=0.1, status_delay=0.02, job_seconds=0.1) as standin:
        yield standin


@pytest.fixture
def kube(api: KubeApiStandIn) -> Iterator[client.ApiClient]:
    with client.ApiClient(client_configuration(api.url)) as api_client:
        yield api_client


@pytest.fixture
def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


def isvc(name: str, image: str = "ghcr.io/fnserve/runtime-cpu:0.1.0") -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "fnserve"}},
            "spec": {"predictor": {"minReplicas": 0, "containers": [{"name": "kserve-container", "image": image}]}}}


def job(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"fnserve.dev/job": "t"}},
            "spec": {"backoffLimit": 0, **spec, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "train", "image": "ghcr.io/fnserve/runtime-cpu"}]}}}}


def apply_isvc(custom: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    """Apply through the client, reading the body raw: the client maps only 200 to a type for this call, so an
    apply that creates (201) would come back as None."""
    response = custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", body["metadata"]["name"], body,
                                                     _preload_content=False, **SSA)
    return json.loads(response.data)


def ready(obj: dict[str, Any]) -> str | None:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)


def watch_isvc(custom: client.CustomObjectsApi, name: str, until: Any, resource_version: str | None = None,
               seconds: int = 5) -> list[dict[str, Any]]:
    """Events of one InferenceService (as the backend watches it) up to the first that satisfies ``until``."""
    events = []
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *KSERVE, NS, "inferenceservices",
                                  field_selector=f"metadata.name={name}", resource_version=resource_version,
                                  timeout_seconds=seconds)
    for event in stream:
        events.append(event)
        if until(event):
            break
    else:
        raise AssertionError(f"the watch ended without the awaited event: {[(e['type'], ready(e['object'])) for e in events]}")
    return events


def error(exc: pytest.ExceptionInfo[client.ApiException]) -> dict[str, Any]:
    return json.loads(exc.value.body)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=body, method=method, headers=headers or {}), timeout=10) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


# -- server-side apply, get, errors ------------------------------------------------------------------------------------
def test_apply_creates_then_updates_bumping_generation_and_records_the_requests(
        api: KubeApiStandIn, custom: client.CustomObjectsApi) -> None:
    created = apply_isvc(custom, isvc("sentiment"))
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    assert [(e["manager"], e["operation"]) for e in created["metadata"]["managedFields"]] == [("fnserve", "Apply")]
    assert api.requests[-1].method == "PATCH"
    assert json.loads(api.requests[-1].body)["kind"] == "InferenceService"

    updated = custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment",
                                                    isvc("sentiment", image="runtime:2"), **SSA)  # 200: typed fine
    assert updated["metadata"]["generation"] == 2
    assert updated["spec"]["predictor"]["containers"][0]["image"] == "runtime:2"
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]

    settled = wait_until(lambda: (lambda o: ready(o) == "True" and o["status"]["observedGeneration"] == 2 and o)(
        custom.get_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment")), 5, "generation 2 Ready")
    again = custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment",
                                                  isvc("sentiment", image="runtime:2"), **SSA)
    assert again["metadata"]["generation"] == 2  # a no-op apply writes nothing: no new resourceVersion
    assert again["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]

    patches = [r for r in api.requests if r.method == "PATCH"]
    assert len(patches) == 3
    for request in patches:
        assert request.path == f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/sentiment"
        assert request.content_type == APPLY
        assert request.query == {"fieldManager": "fnserve", "force": "true"}


def test_an_apply_that_creates_answers_201_which_the_client_returns_as_none(custom: client.CustomObjectsApi) -> None:
    assert custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "a", isvc("a"), **SSA) is None
    assert custom.get_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "a")["metadata"]["name"] == "a"


def test_apply_drops_fields_the_manager_no_longer_sets_and_keeps_others(custom: client.CustomObjectsApi) -> None:
    body = isvc("s")
    body["metadata"]["labels"]["extra"] = "1"
    body["metadata"]["annotations"] = {"note": "x"}
    apply_isvc(custom, body)
    other = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": {"name": "s", "labels": {"team": "ml"}}}
    custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "s", other, field_manager="kubectl",
                                          _content_type=APPLY)
    del body["metadata"]["labels"]["extra"], body["metadata"]["annotations"]
    obj = custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "s", body, **SSA)
    assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "fnserve", "team": "ml"}
    assert "annotations" not in obj["metadata"]
    assert obj["metadata"]["generation"] == 1  # metadata changes do not bump the generation


def test_get_and_a_missing_object_is_a_404_status(custom: client.CustomObjectsApi) -> None:
    apply_isvc(custom, isvc("sentiment"))
    assert custom.get_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment")["kind"] == \
        "InferenceService"
    with pytest.raises(client.ApiException) as exc:
        custom.get_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "nope")
    assert exc.value.status == 404
    assert error(exc) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": 'inferenceservices.serving.kserve.io "nope" not found', "reason": "NotFound",
                          "details": {"name": "nope", "group": "serving.kserve.io", "kind": "inferenceservices"},
                          "code": 404}


def test_refusals_match_the_api_server(custom: client.CustomObjectsApi, api: KubeApiStandIn) -> None:
    with pytest.raises(client.ApiException) as exc:  # the client's default for custom objects is a merge patch
        custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "a", isvc("a"))
    assert exc.value.status == 415 and error(exc)["reason"] == "UnsupportedMediaType"
    assert api.requests[-1].content_type == "application/merge-patch+json"

    with pytest.raises(client.ApiException) as exc:
        custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "a", isvc("a"), _content_type=APPLY)
    assert exc.value.status == 422
    assert error(exc)["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                                     "required for apply patch")

    with pytest.raises(client.ApiException) as exc:
        custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "other", isvc("a"), **SSA)
    assert exc.value.status == 400
    assert error(exc)["message"] == "the name of the object (a) does not match the name on the URL (other)"

    wrong = {**isvc("a"), "apiVersion": "serving.kserve.io/v1alpha1"}
    with pytest.raises(client.ApiException) as exc:
        custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "a", wrong, **SSA)
    assert exc.value.status == 400 and "API version in the data" in error(exc)["message"]

    with pytest.raises(client.ApiException) as exc:  # the plural, not the kind, goes in the URL
        custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservice", "a", isvc("a"), **SSA)
    assert exc.value.status == 404

    apply_isvc(custom, isvc("a"))
    with pytest.raises(client.ApiException) as exc:  # another manager, not forcing, changing fnserve's field
        custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "a", isvc("a", image="other"),
                                              field_manager="someone", _content_type=APPLY)
    assert exc.value.status == 409 and error(exc)["reason"] == "Conflict"
    assert '"fnserve"' in error(exc)["message"] and ".spec.predictor.containers" in error(exc)["message"]


# -- the InferenceService controller -----------------------------------------------------------------------------------
def test_watch_sees_the_inferenceservice_go_unknown_then_ready_at_each_generation(
        custom: client.CustomObjectsApi) -> None:
    apply_isvc(custom, isvc("sentiment"))
    events = watch_isvc(custom, "sentiment", lambda e: ready(e["object"]) == "True")
    assert events[0]["type"] == "ADDED"
    assert [ready(e["object"]) for e in events][-2:] == ["Unknown", "True"]
    unknown = next(e["object"] for e in events if ready(e["object"]) == "Unknown")
    assert {c["reason"] for c in unknown["status"]["conditions"]} == {"RevisionMissing"}
    obj = events[-1]["object"]
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]}.items() >= {
        "PredictorReady": "True", "IngressReady": "True", "Ready": "True"}.items()
    assert obj["status"]["url"] == f"http://sentiment.{NS}.example.com"
    assert obj["status"]["address"]["url"] == f"http://sentiment-predictor.{NS}.svc.cluster.local"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert "inferenceservice.finalizers" in obj["metadata"]["finalizers"]

    updated = custom.patch_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment",
                                                    isvc("sentiment", image="runtime:2"), **SSA)
    assert ready(updated) == "True" and updated["status"]["observedGeneration"] == 1  # stale until reconciled
    events = watch_isvc(custom, "sentiment", lambda e: ready(e["object"]) == "True",
                        resource_version=updated["metadata"]["resourceVersion"])
    assert [(e["type"], ready(e["object"]), e["object"]["status"]["observedGeneration"]) for e in events] == [
        ("MODIFIED", "Unknown", 2), ("MODIFIED", "True", 2)]


def test_pods_and_logs_of_a_ready_inferenceservice(api: KubeApiStandIn, custom: client.CustomObjectsApi,
                                                    kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.set_logs("inferenceservices", "sentiment", "INFO: loaded\nINFO: serving\n")
    apply_isvc(custom, isvc("sentiment"))
    pods = wait_until(lambda: core.list_namespaced_pod(NS, label_selector="serving.kserve.io/inferenceservice="
                                                       "sentiment,component=predictor").items, 5, "a predictor pod")
    pod = pods[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip and pod.status.start_time
    assert [c.name for c in pod.spec.containers] == ["kserve-container", "queue-proxy"]
    with pytest.raises(client.ApiException) as exc:  # two containers: the log call must name one
        core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert exc.value.status == 400 and "choose one of: [kserve-container queue-proxy]" in error(exc)["message"]
    assert core.read_namespaced_pod_log(pod.metadata.name, NS, container="kserve-container") == \
        "INFO: loaded\nINFO: serving\n"
    assert core.read_namespaced_pod_log(pod.metadata.name, NS, container="kserve-container", tail_lines=1) == \
        "INFO: serving\n"


def test_a_canary_shares_traffic_with_the_rolled_out_revision_and_promotion_keeps_its_revision(
        api: KubeApiStandIn, custom: client.CustomObjectsApi) -> None:
    """KServe's canaryTrafficPercent: the new Revision takes that share, the last one that had all the traffic the
    rest; dropping the field is a traffic change only, so Knative keeps the Revision (and its pod)."""
    def settled(generation: int) -> dict[str, Any]:
        return wait_until(lambda: (lambda o: ready(o) == "True" and o["status"]["observedGeneration"] == generation
                                   and o)(custom.get_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "s")),
                          5, f"generation {generation} Ready")

    def pods() -> dict[str, str]:
        return {p["metadata"]["name"]: p["metadata"]["labels"]["serving.knative.dev/revision"]
                for p in api.list_objects("pods", NS, labels="serving.kserve.io/inferenceservice=s")}

    apply_isvc(custom, isvc("s"))
    settled(1)
    canary = isvc("s", image="runtime:2")
    canary["spec"]["predictor"]["canaryTrafficPercent"] = 10
    apply_isvc(custom, canary)
    predictor = settled(2)["status"]["components"]["predictor"]
    assert predictor["traffic"] == [
        {"revisionName": "s-predictor-00002", "percent": 10, "latestRevision": True},
        {"revisionName": "s-predictor-00001", "percent": 90, "latestRevision": False, "tag": "prev"}]
    assert predictor["latestRolledoutRevision"] == "s-predictor-00001"
    running = wait_until(lambda: (lambda found: len(found) == 2 and found)(pods()), 5, "a pod of each revision")
    assert sorted(running.values()) == ["s-predictor-00001", "s-predictor-00002"]

    apply_isvc(custom, isvc("s", image="runtime:2"))  # promoted
    predictor = settled(3)["status"]["components"]["predictor"]
    assert predictor["latestCreatedRevision"] == "s-predictor-00002"
    assert predictor["traffic"] == [{"revisionName": "s-predictor-00002", "percent": 100, "latestRevision": True}]
    assert (predictor["latestRolledoutRevision"], predictor["previousRolledoutRevision"]) == (
        "s-predictor-00002", "s-predictor-00001")
    assert pods() == {name: revision for name, revision in running.items() if revision == "s-predictor-00002"}


def test_fail_next_ends_the_reconcile_ready_false_with_the_message(api: KubeApiStandIn,
                                                                   custom: client.CustomObjectsApi) -> None:
    api.fail_next("inferenceservices", "sentiment", reason="RevisionFailed",
                  message="Container failed with: ModuleNotFoundError: No module named 'torch'")
    apply_isvc(custom, isvc("sentiment"))
    obj = watch_isvc(custom, "sentiment", lambda e: ready(e["object"]) in ("True", "False"))[-1]["object"]
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Ready"]["status"] == conditions["PredictorReady"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "RevisionFailed"
    assert conditions["Ready"]["message"] == "Container failed with: ModuleNotFoundError: No module named 'torch'"
    pod = api.list_objects("pods", NS, labels="serving.kserve.io/inferenceservice=sentiment")[0]
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"


def test_hold_keeps_it_unknown_until_released(api: KubeApiStandIn, custom: client.CustomObjectsApi) -> None:
    api.hold("inferenceservices", "slow")
    apply_isvc(custom, isvc("slow"))
    wait_until(lambda: ready(api.get_object("inferenceservices", "slow", NS) or {}) == "Unknown", 5, "Unknown")
    assert ready(custom.get_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "slow")) == "Unknown"
    api.release("inferenceservices", "slow")
    wait_until(lambda: ready(api.get_object("inferenceservices", "slow", NS) or {}) == "True", 5, "Ready")


def test_delete_finalizes_then_emits_deleted_and_its_pods_go(api: KubeApiStandIn, custom: client.CustomObjectsApi,
                                                             kube: client.ApiClient) -> None:
    apply_isvc(custom, isvc("sentiment"))
    obj = watch_isvc(custom, "sentiment", lambda e: ready(e["object"]) == "True")[-1]["object"]
    deleted = custom.delete_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment",
                                                     propagation_policy="Foreground")
    assert deleted["metadata"]["deletionTimestamp"]  # the KServe finalizer holds it briefly
    assert api.requests[-1].query == {"propagationPolicy": "Foreground"}
    events = watch_isvc(custom, "sentiment", lambda e: e["type"] == "DELETED",
                        resource_version=obj["metadata"]["resourceVersion"])
    assert events[0]["type"] == "MODIFIED" and events[0]["object"]["metadata"]["deletionTimestamp"]
    assert {e["type"] for e in events[:-1]} == {"MODIFIED"}  # finalizers come off one by one
    wait_until(lambda: not client.CoreV1Api(kube).list_namespaced_pod(NS).items, 5, "the pods to go")
    with pytest.raises(client.ApiException) as exc:
        custom.delete_namespaced_custom_object(*KSERVE, NS, "inferenceservices", "sentiment")
    assert exc.value.status == 404


def test_a_watch_from_an_expired_resource_version_is_a_410(api: KubeApiStandIn,
                                                           custom: client.CustomObjectsApi) -> None:
    old = apply_isvc(custom, isvc("a"))["metadata"]["resourceVersion"]
    apply_isvc(custom, isvc("b"))
    api.expire_watch_history()
    with pytest.raises(client.ApiException) as exc:
        watch_isvc(custom, "a", lambda e: True, resource_version=old)
    assert exc.value.status == 410


# -- Jobs ---------------------------------------------------------------------------------------------------------------
def test_an_applied_job_runs_a_pod_and_completes(api: KubeApiStandIn, kube: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    api.job_outcome("train-", succeed=True, logs="epoch 1\nepoch 2\nsaved\n")
    applied = batch.patch_namespaced_job("train-1", NS, job("train-1"), **SSA)
    assert isinstance(applied, client.V1Job) and applied.metadata.generation == 1
    assert api.requests[-1].content_type == APPLY and api.requests[-1].query["fieldManager"] == "fnserve"
    assert applied.spec.template.metadata.labels["job-name"] == "train-1"

    done = None
    for event in watch.Watch().stream(batch.list_namespaced_job, NS, field_selector="metadata.name=train-1",
                                      timeout_seconds=5):
        job_obj = event["object"]  # typed: V1Job
        if any(c.type == "Complete" and c.status == "True" for c in (job_obj.status.conditions or [])):
            done = job_obj
            break
    assert done is not None and done.status.succeeded == 1 and done.status.completion_time
    assert done.status.active is None  # zero counts are omitted

    pods = core.list_namespaced_pod(NS, label_selector="job-name=train-1").items
    assert [p.status.phase for p in pods] == ["Succeeded"]
    assert pods[0].metadata.labels["batch.kubernetes.io/job-name"] == "train-1"
    assert core.read_namespaced_pod_log(pods[0].metadata.name, NS) == "epoch 1\nepoch 2\nsaved\n"


def test_a_failing_job_ends_failed_with_its_logs(api: KubeApiStandIn, kube: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    api.job_outcome("bad", succeed=False, logs="Traceback (most recent call last):\nValueError: no data\n")
    batch.patch_namespaced_job("bad", NS, job("bad"), **SSA)
    failed = wait_until(lambda: next((c for c in (batch.read_namespaced_job("bad", NS).status.conditions or [])
                                      if c.type == "Failed"), None), 5, "the Failed condition")
    assert (failed.status, failed.reason) == ("True", "BackoffLimitExceeded")
    assert batch.read_namespaced_job("bad", NS).status.failed == 1  # backoffLimit 0: one attempt
    pod = core.list_namespaced_pod(NS, label_selector="job-name=bad").items[0]
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 1
    assert core.read_namespaced_pod_log(pod.metadata.name, NS).endswith("ValueError: no data\n")


def test_a_job_past_its_active_deadline_fails_deadline_exceeded(api: KubeApiStandIn, kube: client.ApiClient) -> None:
    batch = client.BatchV1Api(kube)
    api.hold_job("slow")
    batch.patch_namespaced_job("slow", NS, job("slow", activeDeadlineSeconds=1), **SSA)
    wait_until(lambda: api.list_objects("pods", NS, labels="job-name=slow"), 5, "the pod")
    failed = wait_until(lambda: next((c for c in (batch.read_namespaced_job("slow", NS).status.conditions or [])
                                      if c.type == "Failed"), None), 5, "the Failed condition")
    assert failed.reason == "DeadlineExceeded"
    wait_until(lambda: not api.list_objects("pods", NS, labels="job-name=slow"), 5, "its pods deleted")


def test_deleting_a_job_orphans_its_pods_unless_told_otherwise(api: KubeApiStandIn, kube: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    api.hold_job("run-")
    for name in ("run-a", "run-b"):
        batch.patch_namespaced_job(name, NS, job(name), **SSA)
    wait_until(lambda: len(core.list_namespaced_pod(NS).items) == 2, 5, "two pods")

    data, code, headers = batch.delete_namespaced_job_with_http_info("run-a", NS)  # this client: a tuple
    assert (code, data["status"]) == (200, "Success") and "child pods are preserved" in headers["Warning"]
    orphan = core.list_namespaced_pod(NS, label_selector="job-name=run-a").items[0]
    assert orphan.metadata.owner_references is None and orphan.status.phase == "Running"

    batch.delete_namespaced_job("run-b", NS, propagation_policy="Background")
    wait_until(lambda: not core.list_namespaced_pod(NS, label_selector="job-name=run-b").items, 5, "run-b's pod")
    assert api.requests[-1].query == {"labelSelector": "job-name=run-b"}


def test_an_invalid_job_is_refused_like_the_api_server_does(kube: client.ApiClient) -> None:
    body = job("bad-policy")
    body["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(client.ApiException) as exc:
        client.BatchV1Api(kube).patch_namespaced_job("bad-policy", NS, body, **SSA)
    assert exc.value.status == 422
    assert error(exc)["message"] == ('Job.batch "bad-policy" is invalid: spec.template.spec.restartPolicy: '
                                     'Unsupported value: "Always": supported values: "OnFailure", "Never"')


def test_configmaps_apply_list_by_label_and_delete(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    for name, function in (("a-code-1", "a"), ("a-code-2", "a"), ("b-code-1", "b")):
        body = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True, "data": {"handler.py": "print(1)"},
                "metadata": {"name": name, "labels": {"fnserve.dev/function": function}}}
        assert isinstance(core.patch_namespaced_config_map(name, NS, body, **SSA), client.V1ConfigMap)
    listed = core.list_namespaced_config_map(NS, label_selector="fnserve.dev/function=a")
    assert [item.metadata.name for item in listed.items] == ["a-code-1", "a-code-2"]
    assert core.delete_namespaced_config_map("a-code-1", NS)["status"] == "Success"
    changed = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True, "data": {"handler.py": "print(2)"},
               "metadata": {"name": "a-code-2", "labels": {"fnserve.dev/function": "a"}}}
    with pytest.raises(client.ApiException) as exc:
        core.patch_namespaced_config_map("a-code-2", NS, changed, **SSA)
    assert exc.value.status == 422 and "immutable" in error(exc)["message"]


# -- Knative Eventing: JobSink and the job-sink receiver ----------------------------------------------------------------
def jobsink(name: str) -> dict[str, Any]:
    return {"apiVersion": "sinks.knative.dev/v1alpha1", "kind": "JobSink", "metadata": {"name": name}, "spec": {"job": {
        "metadata": {"labels": {"fnserve.dev/job": name}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "train", "image": "ghcr.io/fnserve/runtime-cpu", "args": ["--event"]}]}}}}}}


def test_a_cloudevent_posted_to_a_jobsink_starts_one_job(api: KubeApiStandIn, custom: client.CustomObjectsApi,
                                                         kube: client.ApiClient) -> None:
    batch = client.BatchV1Api(kube)
    custom.patch_namespaced_custom_object("sinks.knative.dev", "v1alpha1", NS, "jobsinks", "train", jobsink("train"),
                                          _preload_content=False, **SSA)
    sink = wait_until(lambda: (lambda s: ready(s) == "True" and s)(custom.get_namespaced_custom_object(
        "sinks.knative.dev", "v1alpha1", NS, "jobsinks", "train")), 5, "the JobSink to be Ready")
    url = sink["status"]["address"]["url"]
    assert url == f"{api.jobsink_url}/{NS}/train"

    event = {"ce-specversion": "1.0", "ce-id": "run-1", "ce-source": "fnserve", "ce-type": "dev.fnserve.train",
             "Content-Type": "application/json"}
    status, headers = http("POST", url, json.dumps({"runId": "run-1"}).encode(), event)
    assert status == 202
    location = urljoin(url, headers["Location"])  # relative, as Knative answers it
    assert headers["Location"] == f"/namespaces/{NS}/name/train/sources/fnserve/ids/run-1"
    wait_until(lambda: http("GET", location)[0] == 200, 5, "the job behind the Location to complete")

    name = jobsink_job_name("train", "fnserve", "run-1")
    created = batch.read_namespaced_job(name, NS)
    assert name.startswith("train-") and "run-1" not in name
    assert created.metadata.labels == {"fnserve.dev/job": "train", JOB_SINK_ID_LABEL: name,
                                       JOB_SINK_NAME_LABEL: "train"}
    container = created.spec.template.spec.containers[0]
    assert {e.name: e.value for e in container.env} == {"KNATIVE_EXECUTION_MODE": "batch",
                                                        "K_EVENT_PATH": "/etc/jobsink-event"}
    assert container.volume_mounts[0].mount_path == "/etc/jobsink-event"
    secret = client.CoreV1Api(kube).read_namespaced_secret(name, NS)
    stored = json.loads(base64.b64decode(secret.data["event"]))
    assert (stored["id"], stored["source"], stored["data"]) == ("run-1", "fnserve", {"runId": "run-1"})

    assert http("POST", url, json.dumps({"runId": "run-1"}).encode(), event)[0] == 202  # the same event again
    structured = {"specversion": "1.0", "id": "run-2", "source": "fnserve", "type": "dev.fnserve.train", "data": {}}
    assert http("POST", url, json.dumps(structured).encode(),
                {"Content-Type": "application/cloudevents+json"})[0] == 202
    jobs = batch.list_namespaced_job(NS, label_selector=f"{JOB_SINK_NAME_LABEL}=train").items
    assert sorted(j.metadata.name for j in jobs) == sorted([name, jobsink_job_name("train", "fnserve", "run-2")])


def test_the_receiver_answers_bare_400s_like_knative(api: KubeApiStandIn, custom: client.CustomObjectsApi) -> None:
    custom.patch_namespaced_custom_object("sinks.knative.dev", "v1alpha1", NS, "jobsinks", "train", jobsink("train"),
                                          _preload_content=False, **SSA)
    wait_until(lambda: ready(api.get_object("jobsinks", "train", NS) or {}) == "True", 5, "the JobSink")
    event = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}
    assert http("POST", f"{api.jobsink_url}/{NS}/missing", b"{}", event)[0] == 400  # an unknown JobSink too
    assert http("POST", f"{api.jobsink_url}/{NS}/train", b"{}", {**event, "ce-id": ""})[0] == 400
    assert http("POST", f"{api.jobsink_url}/{NS}/train", b"{}", {"Content-Type": "application/json"})[0] == 400
    assert http("POST", f"{api.jobsink_url}/{NS}/train", b"{}", {**event, "ce-source": "fnserve/ns/train"})[0] == 202
    location = f"{api.jobsink_url}/namespaces/{NS}/name/train/sources/fnserve/ns/train/ids/1"
    assert http("GET", location)[0] == 400  # a source with slashes breaks Knative's status URL
    api.job_outcome("train-", succeed=False, seconds=0.05)
    assert http("POST", f"{api.jobsink_url}/{NS}/train", b"{}", {**event, "ce-id": "2"})[0] == 202
    failed = f"{api.jobsink_url}/namespaces/{NS}/name/train/sources/s/ids/2"
    wait_until(lambda: http("GET", failed)[0] == 400, 5, "the failed run's status")
    assert [r.server for r in api.requests].count("jobsink") >= 6
