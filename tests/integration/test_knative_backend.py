"""The cluster backend against KubeApiStandIn — a stand-in for the Kubernetes API server (server-side
apply, GET/watch/DELETE, status conditions moved by simulated KServe, Job and JobSink controllers and
Knative's job-sink receiver), served on loopback. There is no cluster here; the rendered objects' shapes
are checked against the real CRD schemas in tests/unit/test_render.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fnserve.backends import knative
from fnserve.backends.base import DeployFailed, FunctionNotFound, NoCanary, NoReadyReplica
from fnserve.manifest import load_function, load_training_job
from fnserve.records import Revision, Rollout
from fnserve.settings import Settings
from fnserve.state import StateStore
from fnserve.storage import describe_folder, open_store, publish
from tests.conftest import EXAMPLE, ROOT, Router, function_copy, wait_for
from tests.kube_standin import KubeApiStandIn

pytestmark = pytest.mark.slow
NS = "fnserve"
SCALE = ROOT / "tests" / "fixtures" / "scale"


@pytest.fixture
def kube() -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(ready_delay=0.3) as api:
        yield api


def settings(tmp_path: Path, kube: KubeApiStandIn, **extra: Any) -> Settings:
    return Settings.from_env(**{"state_dir": tmp_path / "state", "cluster_api_url": kube.url,
                                "cluster_namespace": NS, "cluster_ready_timeout": 5.0, **extra})


def revision(folder: Path, number: int = 1, **changes: Any) -> Revision:
    function = load_function(folder)
    data = function.to_dict()
    data["spec"]["model"]["uri"] = "artifacts://sentiment/20261123-101502-123-a9f4"
    data["spec"].update(changes)
    from fnserve.manifest import parse_function

    return Revision(parse_function(data), number, folder, Path(""), 0.0)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_apply_waits_for_ready_then_serves_its_address_and_delete_removes_it(tmp_path: Path,
                                                                          kube: KubeApiStandIn) -> None:
    async def scenario() -> None:
        backend, _ = knative.create(settings(tmp_path, kube), StateStore(tmp_path / "db"), kube.api_client())
        await backend.apply(revision(EXAMPLE))
        endpoint = await backend.acquire("sentiment")
        assert endpoint.url == f"http://sentiment-predictor.{NS}.svc.cluster.local"
        assert backend.status("sentiment").ready

        # a new revision: applied again (generation 2), ready again, the old code ConfigMap collected
        await backend.apply(revision(EXAMPLE, 2, timeout=45))
        isvc = kube.get_object("inferenceservices", "sentiment", NS)
        assert isvc["metadata"]["generation"] == 2 and isvc["spec"]["predictor"]["timeout"] == 45
        assert isvc["status"]["observedGeneration"] == 2
        await asyncio.to_thread(wait_for, lambda: len(kube.list_objects(
            "configmaps", NS, labels="fnserve.dev/function=sentiment")) == 1, 5, "the old code ConfigMap to go")

        await backend.delete("sentiment")
        await asyncio.to_thread(wait_for, lambda: kube.get_object("inferenceservices", "sentiment", NS) is None, 5,
                                "KServe's finalizer to let the InferenceService go")
        with pytest.raises(FunctionNotFound):
            await backend.delete("sentiment")
        with pytest.raises(FunctionNotFound):
            await backend.acquire("sentiment")
        await backend.close()

    run(scenario())
    applies = [r for r in kube.requests if r.method == "PATCH"]
    assert applies and all(r.content_type == "application/apply-patch+yaml" and r.query.get("fieldManager") == "fnserve"
                           for r in applies)
    assert {r.path.split("/")[-2] for r in applies} == {"configmaps", "inferenceservices"}


def test_a_canary_is_kserve_s_traffic_split_until_promoted_or_dropped(tmp_path: Path, kube: KubeApiStandIn) -> None:
    """The canary revision is applied with canaryTrafficPercent; dropping it applies the serving revision again
    (pinned at 0 first, so the canary never gets everything), promoting it applies it without the field and
    Knative keeps its pods. Both revisions' code stays while both may start pods."""
    def isvc() -> dict[str, Any]:
        found = kube.get_object("inferenceservices", "sentiment", NS)
        assert found is not None
        return found

    def serving() -> tuple[str, int | None, int]:
        """The revision the InferenceService runs, its canary share, its timeout (each revision has its own)."""
        predictor = isvc()["spec"]["predictor"]
        return isvc()["metadata"]["labels"]["fnserve.dev/revision"], predictor.get("canaryTrafficPercent"), \
            predictor["timeout"]

    def split() -> list[int]:
        return sorted(t["percent"] for t in isvc()["status"]["components"]["predictor"]["traffic"])

    def code() -> set[str]:
        return {c["metadata"]["name"] for c in kube.list_objects("configmaps", NS, labels="fnserve.dev/function=sentiment")}

    def pods(revision: str) -> list[str]:
        return [p["metadata"]["name"] for p in kube.list_objects("pods", NS, labels=f"fnserve.dev/revision={revision}")]

    async def until(predicate: Any, what: str) -> Any:
        return await asyncio.to_thread(wait_for, predicate, 5, what)

    async def scenario() -> None:
        backend, _ = knative.create(settings(tmp_path, kube), StateStore(tmp_path / "db"), kube.api_client())
        assert backend.splits_traffic
        with pytest.raises(FunctionNotFound, match="serves no revision to run a canary beside"):
            await backend.apply(revision(EXAMPLE, 2, timeout=45), canary=10)
        await backend.apply(revision(EXAMPLE, 1))
        main_code = code()
        await backend.apply(revision(EXAMPLE, 2, timeout=45), canary=10)
        assert serving() == ("2", 10, 45) and split() == [10, 90]
        status = backend.status("sentiment")
        assert (status.revision, status.canary_revision, status.canary_percent) == (1, 2, 10)
        assert (await backend.acquire("sentiment", canary=True)).url == (await backend.acquire("sentiment")).url
        await asyncio.to_thread(wait_for, lambda: sorted(r.revision for r in backend.status("sentiment").replicas)
                                == [1, 2], 10, "the status to list a pod of each revision (re-read every 5 s)")

        await backend.apply(revision(EXAMPLE, 3, timeout=60), canary=20)  # replaces the canary
        assert serving() == ("3", 20, 60) and split() == [20, 80]
        await until(lambda: len(code()) == 2 and main_code < code(), "revision 2's code to go, revision 1's to stay")

        kube.fail_next("inferenceservices", "sentiment")
        with pytest.raises(DeployFailed, match="the model did not load"):
            await backend.apply(revision(EXAMPLE, 4, timeout=50), canary=30)
        status = backend.status("sentiment")
        assert (status.revision, status.canary_revision, status.canary_percent) == (1, 3, 20)

        applied = len([r for r in kube.requests if r.method == "PATCH" and "inferenceservices" in r.path])
        await backend.drop_canary("sentiment")
        assert serving() == ("1", None, 30) and split() == [100]
        bodies = [json.loads(r.body)["spec"]["predictor"] for r in kube.requests
                  if r.method == "PATCH" and "inferenceservices" in r.path][applied:]
        assert [body.get("canaryTrafficPercent") for body in bodies] == [0, None]  # pinned first
        status = backend.status("sentiment")
        assert (status.revision, status.canary_revision, status.canary_percent) == (1, None, 0)
        await until(lambda: code() == main_code, "the dropped canary's code to go")
        for action in (backend.promote, backend.drop_canary):
            with pytest.raises(NoCanary, match="function 'sentiment' has no canary to"):
                await action("sentiment")

        await backend.apply(revision(EXAMPLE, 5, timeout=40), canary=50)
        canary_pods = await until(lambda: pods("5"), "the canary's pod")
        await backend.promote("sentiment")
        assert serving() == ("5", None, 40) and split() == [100]
        status = backend.status("sentiment")
        assert (status.revision, status.canary_revision, status.canary_percent) == (5, None, 0)
        await until(lambda: not pods("1"), "revision 1's pods to go")
        assert pods("5") == canary_pods  # the same Knative revision, now with all the traffic: no cold start
        await until(lambda: len(code()) == 1 and not code() & main_code, "revision 1's code to go")

        await backend.delete("sentiment")
        with pytest.raises(FunctionNotFound):
            backend.status("sentiment")
        await backend.close()

    run(scenario())


def test_a_second_router_follows_a_canary_it_did_not_apply_and_promotes_it(tmp_path: Path,
                                                                           kube: KubeApiStandIn) -> None:
    """Routers share one InferenceService: the one that learns of a canary from the database (follow) can
    promote it, without having applied anything itself."""
    async def scenario() -> None:
        first, _ = knative.create(settings(tmp_path, kube), StateStore(tmp_path / "db"), kube.api_client())
        second, _ = knative.create(settings(tmp_path / "b", kube), StateStore(tmp_path / "db-b"), kube.api_client())
        main, canary = revision(EXAMPLE, 1), revision(EXAMPLE, 2, timeout=45)
        await first.apply(main)
        await first.apply(canary, canary=30)
        with pytest.raises(FunctionNotFound):  # it applied nothing itself: alone, it knows no function
            await second.promote("sentiment")
        second.follow("sentiment", Rollout(main, canary, 30))
        await second.promote("sentiment")
        found = kube.get_object("inferenceservices", "sentiment", NS)
        assert found is not None
        assert found["metadata"]["labels"]["fnserve.dev/revision"] == "2"
        assert "canaryTrafficPercent" not in found["spec"]["predictor"]
        second.follow("sentiment", None)
        with pytest.raises(FunctionNotFound):
            await second.promote("sentiment")
        await first.close()
        await second.close()

    run(scenario())


def test_failing_and_stuck_revisions_become_readable_deploy_errors(tmp_path: Path, kube: KubeApiStandIn) -> None:
    async def scenario() -> None:
        backend, _ = knative.create(settings(tmp_path, kube, cluster_ready_timeout=1.5),
                                    StateStore(tmp_path / "db"), kube.api_client())
        kube.fail_next("inferenceservices", "sentiment", reason="RevisionFailed",
                       message="Container failed with: ModuleNotFoundError: No module named 'handler'")
        with pytest.raises(DeployFailed, match="sentiment: the InferenceService is not Ready: PredictorReady: "
                                               "RevisionFailed: Container failed with: ModuleNotFoundError"):
            await backend.apply(revision(EXAMPLE))
        with pytest.raises(NoReadyReplica, match="is not Ready"):
            await backend.acquire("sentiment")

        kube.hold("inferenceservices", "other")
        other = function_copy(EXAMPLE, tmp_path / "other", name="other", skip=("model",))
        with pytest.raises(DeployFailed, match=r"other: the InferenceService was not Ready within 1.5 s \(.*\)"):
            await backend.apply(revision(other))
        await backend.close()

    run(scenario())


def test_what_cannot_run_in_a_cluster_fails_before_anything_is_applied(tmp_path: Path, kube: KubeApiStandIn) -> None:
    async def scenario() -> None:
        backend, _ = knative.create(settings(tmp_path, kube), StateStore(tmp_path / "db"), kube.api_client())
        local = revision(EXAMPLE)
        data = local.function.to_dict()
        data["spec"]["model"]["uri"] = "./model"
        from fnserve.manifest import parse_function

        with pytest.raises(DeployFailed, match="is a folder on this machine"):
            await backend.apply(Revision(parse_function(data), 1, EXAMPLE, Path(""), 0.0))
        await backend.close()

    run(scenario())
    assert not [r for r in kube.requests if r.method == "PATCH"]


@pytest.mark.parametrize("jobsink", [True, False], ids=["jobsink", "plain-job"])
def test_training_runs_in_the_cluster(tmp_path: Path, kube: KubeApiStandIn, bucket: str, s3_endpoint: str,
                                      jobsink: bool) -> None:
    """A run is started (through a JobSink, or as a plain Job), followed to its end, and its metrics are
    read from the _manifest.json the wrapper in the pod published; a failed Job publishes nothing; a
    cancelled one is deleted."""
    job = load_training_job(SCALE)
    config = settings(tmp_path, kube, cluster_jobsink=jobsink, artifact_root=f"s3://{bucket}/artifacts",
                      s3_endpoint_url=s3_endpoint)

    def publish_run(run_id: str) -> None:  # what the job wrapper in the pod does
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        (out / "model.onnx").write_bytes(b"weights")
        (out / "metrics.json").write_text('{"scale": 2}')
        store = open_store(f"s3://{bucket}/artifacts/scale", config.s3_options()).child(run_id)
        publish(store, out, describe_folder(out), {"runId": run_id, "metrics": {"scale": 2}})

    async def scenario() -> None:
        backend, training = knative.create(config, StateStore(tmp_path / "db"), kube.api_client())
        await backend.start()
        await training.start()
        kube.hold_job("scale-train", logs="fnserve-job: training...\n")
        record = await training.submit_job(job, SCALE, {"scale": 2})
        assert record.state == "queued" and record.output == f"s3://{bucket}/artifacts/scale"
        await asyncio.to_thread(wait_for, lambda: training.job_status(record.id).state == "running", 10,
                                "the Job to start")
        publish_run(record.id)
        kube.release_job("scale-train", succeed=True)
        done = await asyncio.wait_for(training.wait_job(record.id), 20)
        assert done.state == "succeeded" and done.metrics == {"scale": 2}
        assert done.artifact_uri == f"artifacts://scale/{record.id}"
        logs = b"".join([chunk async for chunk in training.job_logs(record.id, follow=False)]).decode()
        assert "training..." in logs

        kube.job_outcome("scale-train", succeed=False, seconds=0.2)
        failed = await training.submit_job(job, SCALE, {})
        failed = await asyncio.wait_for(training.wait_job(failed.id), 20)
        assert failed.state == "failed" and "BackoffLimitExceeded" in failed.message and failed.artifact_uri is None

        kube.hold_job("scale-train")
        running = await training.submit_job(job, SCALE, {})
        await asyncio.to_thread(wait_for, lambda: training.job_status(running.id).state == "running", 10,
                                "the Job to start")
        cancelled = await training.cancel_job(running.id)
        assert cancelled.state == "cancelled"
        await training.close()
        await backend.close()

    run(scenario())
    jobs = kube.list_objects("jobs", NS)
    assert len(jobs) == 2  # the cancelled run's Job was deleted
    assert all(j["spec"]["backoffLimit"] == 0 and j["spec"]["ttlSecondsAfterFinished"] for j in jobs)
    if jobsink:
        assert kube.get_object("jobsinks", "scale-train", NS) is not None
        posts = [r for r in kube.requests if r.server == "jobsink" and r.method == "POST"]
        first = json.loads(posts[0].body)
        assert len(posts) == 3 and first["data"] == {"runId": first["id"], "params": {"scale": 2}}


def test_the_router_deploys_through_the_cluster_backend(tmp_path: Path, kube: KubeApiStandIn, bucket: str,
                                                        s3_endpoint: str) -> None:
    """`fnserve up --backend knative` end to end: the CLI deploys, the router pins the run in S3 and
    applies, status and rm work; the predictor's address is the InferenceService's."""
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "model.onnx").write_bytes(b"weights")
    env = {"FNSERVE_CLUSTER_API_URL": kube.url, "FNSERVE_CLUSTER_NAMESPACE": NS,
           "FNSERVE_ARTIFACT_ROOT": f"s3://{bucket}/artifacts", "FNSERVE_S3_ENDPOINT_URL": s3_endpoint,
           "AWS_ACCESS_KEY_ID": "fnserve-test", "AWS_SECRET_ACCESS_KEY": "fnserve-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    options = Settings.from_env(env={**env}).s3_options()
    store = open_store(f"s3://{bucket}/artifacts/sentiment", options).child("20261123-101502-123-a9f4")
    publish(store, run_folder, describe_folder(run_folder), {"runId": "20261123-101502-123-a9f4"})

    router = Router(tmp_path / "state", extra=["--backend", "knative"], env=env).start()
    try:
        deployed = json.loads(router.cli("deploy", str(EXAMPLE), "--json", check=True).stdout)
        assert deployed["manifest"]["spec"]["model"]["uri"] == "artifacts://sentiment/20261123-101502-123-a9f4"
        assert deployed["ready"] and deployed["address"] == f"http://sentiment.{NS}.example.com"
        isvc = kube.get_object("inferenceservices", "sentiment", NS)
        env_vars = isvc["spec"]["predictor"]["containers"][0]["env"]
        wanted = {"name": "STORAGE_URI", "value": f"s3://{bucket}/artifacts/sentiment/20261123-101502-123-a9f4"}
        assert wanted in env_vars
        code = kube.list_objects("configmaps", NS, labels="fnserve.dev/function=sentiment")
        assert "handler.py" in code[0]["data"] and not (tmp_path / "state" / "models").exists()  # no download
        assert "sentiment" in router.cli("ls", check=True).stdout
        router.cli("rm", "sentiment", check=True)
        wait_for(lambda: kube.get_object("inferenceservices", "sentiment", NS) is None, 5, "the deletion")
    finally:
        router.stop()


def test_without_knative_eventing_runs_become_plain_jobs(tmp_path: Path, bucket: str, s3_endpoint: str) -> None:
    """A cluster without the JobSink API (no Knative Eventing): the backend notices and submits Jobs."""
    from tests.kube_standin import DEFAULT_RESOURCES

    without_jobsink = [r for r in DEFAULT_RESOURCES if r.plural != "jobsinks"]
    with KubeApiStandIn(resources=without_jobsink) as kube:
        config = settings(tmp_path, kube, artifact_root=f"s3://{bucket}/artifacts", s3_endpoint_url=s3_endpoint)

        async def scenario() -> str:
            backend, training = knative.create(config, StateStore(tmp_path / "db"), kube.api_client())
            kube.job_outcome("scale-train", succeed=False, seconds=0.1)
            record = await training.submit_job(load_training_job(SCALE), SCALE, {})
            done = await asyncio.wait_for(training.wait_job(record.id), 20)
            await training.close()
            await backend.close()
            return done.state

        assert run(scenario()) == "failed"
        (job,) = kube.list_objects("jobs", NS)
        assert job["metadata"]["name"].startswith("scale-train-2")


def test_follow_logs_streams_what_the_pods_print_as_they_print_it(tmp_path: Path, kube: KubeApiStandIn) -> None:
    async def scenario() -> None:
        backend, _ = knative.create(settings(tmp_path, kube), StateStore(tmp_path / "db"), kube.api_client())
        with pytest.raises(FunctionNotFound):  # before any stream starts, so the router can answer 404
            backend.follow_logs("sentiment", 10)
        scaling = {**load_function(EXAMPLE).to_dict()["spec"]["scaling"], "minReplicas": 1}
        await backend.apply(revision(EXAMPLE, scaling=scaling))
        kube.set_logs("inferenceservices", "sentiment", "model loaded\n", container="kserve-container")
        stream = backend.follow_logs("sentiment", 10)
        first = await asyncio.wait_for(stream.__anext__(), 10)
        assert first.startswith(b"==> sentiment-predictor") and first.endswith(b"<==\nmodel loaded\n")
        kube.set_logs("inferenceservices", "sentiment", "POST /v1/models/sentiment:predict 200\n",
                      container="kserve-container", append=True)
        assert await asyncio.wait_for(stream.__anext__(), 10) == b"POST /v1/models/sentiment:predict 200\n"
        await stream.aclose()  # the reader left: its pod streams are closed
        await backend.close()

    run(scenario())
