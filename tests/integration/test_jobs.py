"""Training jobs through a running platform: train → publish → deploy → roll back, under traffic; and
jobs that fail, time out, are cancelled or wait in the queue."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, Router, alive, edit_manifest, http, manifest_of, running_router, wait_for

pytestmark = pytest.mark.slow

SCALE = ROOT / "tests" / "fixtures" / "scale"


def scale_function(tmp_path: Path, **spec: object) -> Path:
    folder = tmp_path / "scale"
    shutil.copytree(SCALE, folder)
    if spec:
        manifest = yaml.safe_load((folder / "train.yaml").read_text())
        manifest["spec"].update(spec)
        (folder / "train.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def predict(router: Router, x: float) -> tuple[int, float | None]:
    status, _, body = http("POST", f"{router.url}/v2/models/scale/infer", timeout=30, body={
        "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}]})
    return status, (body["outputs"][0]["data"][0] if status == 200 else None)


def job(router: Router, job_id: str) -> dict:
    return json.loads(router.cli("jobs", "status", job_id, "--json", check=True).stdout)


def published(router: Router) -> list[Path]:
    return sorted((router.state_dir / "artifacts").rglob("*"))


def test_train_deploys_the_new_model_without_dropping_a_request_and_rolls_back(router: Router,
                                                                               tmp_path: Path) -> None:
    fn = scale_function(tmp_path)
    # no run yet: the admin API says so in words and in a reason the CLI acts on (it runs the job first)
    status, _, body = http("POST", f"{router.url}/api/functions", {"manifest": manifest_of(fn),
                                                                   "sourceDir": str(fn)}, router.admin)
    assert (status, body["reason"]) == (400, "NoCompleteRun")
    assert "artifacts://scale/latest: no complete run under" in body["error"]

    result = router.cli("train", str(fn), "--follow", check=True)
    assert "fnserve-job: succeeded" in result.stdout and "deploy:    revision 1" in result.stdout
    assert 'metrics:   {"scale": 2}' in result.stdout
    assert predict(router, 1.5) == (200, 3.0)

    # a second run rolls the function forward while requests keep coming
    answers: list[tuple[int, float | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            answers.append(predict(router, 1.0))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        job_id = router.cli("train", str(fn), "--set", "scale=3", check=True).stdout.strip()
        wait_for(lambda: job(router, job_id)["deploy"] not in ("", "pending"), 120, "the new run to be deployed")
        wait_for(lambda: answers and answers[-1] == (200, 3.0), 30, "answers from the new model")
    finally:
        stop.set()
        sender.join()
    assert {status for status, _ in answers} == {200}, answers
    assert answers[0] == (200, 2.0) and answers[-1] == (200, 3.0)
    record = job(router, job_id)
    assert record["state"] == "succeeded" and record["deploy"] == "revision 2" and record["metrics"] == {"scale": 3}
    assert record["artifactUri"] == f"artifacts://scale/{job_id}"
    assert not (router.state_dir / "jobs" / job_id / "scratch").exists()

    revisions = json.loads(router.cli("revisions", "scale", "--json", check=True).stdout)["revisions"]
    assert [(r["revision"], r["current"]) for r in revisions] == [(1, False), (2, True)]
    assert revisions[1]["modelUri"] == f"artifacts://scale/{job_id}"  # pinned, not "latest"

    assert "revision 1 serving again" in router.cli("rollback", "scale", check=True).stdout
    assert predict(router, 1.0) == (200, 2.0)
    result = router.cli("rollback", "scale", "--to", "1")
    assert result.returncode == 1 and "revision 1 is already serving" in result.stderr

    # deploying the manifest pins the newest complete run: revision 3 serves run 2 again
    deployed = json.loads(router.cli("deploy", str(fn), "--json", check=True).stdout)
    assert deployed["revision"] == 3 and deployed["manifest"]["spec"]["model"]["uri"] == f"artifacts://scale/{job_id}"
    assert predict(router, 1.0) == (200, 3.0)

    # a run whose files changed after publishing is refused, and nothing changes
    (router.state_dir / "artifacts" / "scale" / job_id / "model.onnx").write_bytes(b"tampered")
    shutil.rmtree(router.state_dir / "models")
    result = router.cli("deploy", str(fn))
    assert result.returncode == 1 and "model.onnx: does not match the run's _manifest.json" in result.stderr
    assert json.loads(router.cli("status", "scale", "--json", check=True).stdout)["revision"] == 3


def test_failed_timed_out_and_cancelled_jobs_publish_nothing_and_leave_no_process(router: Router,
                                                                                  tmp_path: Path) -> None:
    fn = scale_function(tmp_path, timeout="3s")
    result = router.cli("train", str(fn), "--set", "exit_code=3", "--follow")
    assert result.returncode == 1 and "exited with status 3" in result.stdout
    assert "state:     failed" in result.stdout and "exit code 3" in result.stdout

    slow = tmp_path / "slow.pids"
    timed_out = router.cli("train", str(fn), "--set", "sleep=60", "--set", f"pidfile={slow}", check=True).stdout.strip()
    # max_jobs is 1: the next job waits in the queue, and can be cancelled there
    queued = router.cli("train", str(fn), "--set", "sleep=60", check=True).stdout.strip()
    assert job(router, queued)["state"] == "queued"
    assert "cancelled (cancelled while queued)" in router.cli("jobs", "cancel", queued, check=True).stdout
    wait_for(lambda: job(router, timed_out)["state"] == "timed_out", 60, "the timeout")
    assert "timeout of 3 s" in job(router, timed_out)["message"]
    assert not any(alive(int(pid)) for pid in slow.read_text().split())

    pids = tmp_path / "cancel.pids"
    cancelled = router.cli("train", str(fn), "--set", "sleep=60", "--set", f"pidfile={pids}", check=True).stdout.strip()
    wait_for(lambda: pids.exists() and pids.read_text(), 60, "the job to start its processes")
    assert "cancelled" in router.cli("jobs", "cancel", cancelled, check=True).stdout
    assert not any(alive(int(pid)) for pid in pids.read_text().split())
    result = router.cli("jobs", "cancel", cancelled)
    assert result.returncode == 1 and "already finished (cancelled)" in result.stderr

    assert f"run {cancelled} with" in router.cli("jobs", "logs", cancelled, check=True).stdout
    listed = json.loads(router.cli("jobs", "ls", "--json", check=True).stdout)["jobs"]
    assert [j["state"] for j in listed] == ["cancelled", "cancelled", "timed_out", "failed"]
    assert all(j["artifactUri"] is None and j["deploy"] == "" for j in listed)
    assert published(router) == [] and not list((router.state_dir / "jobs").glob("*/scratch"))
    assert json.loads(router.cli("ls", "--json", check=True).stdout) == {"functions": []}


def test_bad_job_requests_change_nothing(router: Router, tmp_path: Path) -> None:
    fn = scale_function(tmp_path, function="nothing-here")
    result = router.cli("train", str(fn))
    assert result.returncode == 1 and "spec.deployOnSuccess: function 'nothing-here' is not deployed" in result.stderr

    (fn / "train.yaml").write_text("apiVersion: fnserve.dev/v1\nkind: TrainingJob\nmetadata: {name: t}\n"
                                   "spec: {function: scale, command: [], timout: 5}\n")
    result = router.cli("train", str(fn))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"{fn / 'train.yaml'}: spec.command: must not be empty",
                                          f"{fn / 'train.yaml'}: spec.timout: unknown field (did you mean timeout?)"]
    assert router.cli("jobs", "status", "nope").stderr.strip() == "fnserve: no job 'nope'"
    assert json.loads(router.cli("jobs", "ls", "--json", check=True).stdout) == {"jobs": []}


def test_jobs_and_replicas_share_the_gpus(tmp_path: Path, example_dir: Path) -> None:
    """One simulated GPU: a GPU job waits while a replica holds it, and gets it once the replica is gone."""
    fn = scale_function(tmp_path, resources={"gpu": 1}, deployOnSuccess=False)
    holder = tmp_path / "holder"
    shutil.copytree(example_dir, holder)
    edit_manifest(holder, resources={"gpu": 1}, scaling={"minReplicas": 1})
    with running_router(tmp_path / "state", env={"FNSERVE_GPUS": "0"}) as router:
        router.cli("deploy", str(holder), check=True)
        job_id = router.cli("train", str(fn), check=True).stdout.strip()
        assert job(router, job_id)["state"] == "queued"
        router.cli("rm", "sentiment", check=True)
        wait_for(lambda: job(router, job_id)["state"] == "succeeded", 60, "the job to get the GPU and finish")
        assert job(router, job_id)["metrics"] == {"scale": 2, "gpus": "0"}


def test_a_router_elsewhere_gets_the_folder_itself(router: Router, tmp_path: Path) -> None:
    """--upload (automatic for a router that is not on this machine) sends the files, not a path."""
    fn = scale_function(tmp_path)
    result = router.cli("train", str(fn), "--upload", "--follow", check=True)
    assert "deploy:    revision 1" in result.stdout
    assert predict(router, 2.0) == (200, 4.0)
    (uploaded,) = (router.state_dir / "uploads").iterdir()  # the job ran in the folder the router received
    assert (uploaded / "train.py").read_bytes() == (fn / "train.py").read_bytes()
    assert json.loads(router.cli("jobs", "ls", "--json", check=True).stdout)["jobs"][0]["sourceDir"] == str(uploaded)
    status, _, body = http("POST", f"{router.url}/api/functions", headers=router.admin, body={
        "manifest": yaml.safe_load((fn / "function.yaml").read_text()), "files": {"../escape.py": "eA=="}})
    assert status == 400 and "leads outside the artifact folder" in body["error"]
