"""Artifacts over S3: boto3 against a real S3 API server on loopback.

No S3-compatible server (MinIO, Ceph) can be installed on this machine, so these tests run moto's
server mode as a subprocess on 127.0.0.1: boto3 speaks real HTTP to it — listing, multipart uploads,
ETags, range-free downloads — exactly as it would to AWS or MinIO.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from fnserve.storage import ArtifactError, S3Options, resolve_model
from tests.conftest import CREDENTIALS, ROOT, Router, edit_manifest, function_copy, http, run_job

pytestmark = pytest.mark.slow

SCALE = ROOT / "tests" / "fixtures" / "scale"
PART = 5 * 2**20  # S3's smallest allowed part


def test_plain_prefix_downloads_once_and_reports_clear_errors(s3_endpoint: str, bucket: str, tmp_path: Path,
                                                              example_dir: Path) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for file in sorted((example_dir / "model").iterdir()):
        client.upload_file(str(file), bucket, f"sentiment/run-1/{file.name}")
    options = S3Options(endpoint_url=s3_endpoint)

    model = resolve_model(f"s3://{bucket}/sentiment/run-1", tmp_path, tmp_path / "cache", "file:///unused", options)
    assert sorted(p.name for p in model.local_dir.iterdir()) == sorted(p.name for p in (example_dir / "model").iterdir())
    assert (model.local_dir / "model.onnx").read_bytes() == (example_dir / "model" / "model.onnx").read_bytes()
    again = resolve_model(f"s3://{bucket}/sentiment/run-1/", tmp_path, tmp_path / "cache", "file:///unused", options)
    assert again.local_dir == model.local_dir and os.listdir(tmp_path / "cache") == [model.local_dir.name]

    with pytest.raises(ArtifactError, match="no objects under this prefix"):
        resolve_model(f"s3://{bucket}/sentiment/run-9", tmp_path, tmp_path / "cache", "file:///unused", options)
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket' does not exist"):
        resolve_model("s3://no-such-bucket/x", tmp_path, tmp_path / "cache", "file:///unused", options)


def test_a_run_published_in_parts_is_pinned_fetched_and_verified(s3_endpoint: str, bucket: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNSERVE_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("FNSERVE_S3_PART_SIZE", str(PART))
    code, outcome, log = run_job(SCALE / "train.yaml", f"s3://{bucket}/runs/scale", "--params",
                                 json.dumps({"scale": 3, "pad_mib": 11}))
    assert code == 0 and outcome["state"] == "succeeded", log
    run_id = outcome["runId"]
    assert outcome["artifactUri"] == f"s3://{bucket}/runs/scale/{run_id}"

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    padding = client.head_object(Bucket=bucket, Key=f"runs/scale/{run_id}/padding.bin")
    assert padding["ContentLength"] == 11 * 2**20
    assert padding["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"runs/scale/{run_id}/_manifest.json")["Body"].read())
    assert {f["path"] for f in manifest["files"]} == {"model.onnx", "metrics.json", "padding.bin"}
    assert manifest["metrics"] == {"scale": 3} and manifest["params"]["scale"] == 3

    options = S3Options(endpoint_url=s3_endpoint)
    model = resolve_model(f"s3://{bucket}/runs/scale/latest", tmp_path, tmp_path / "cache", "file:///unused", options)
    assert model.uri == f"s3://{bucket}/runs/scale/{run_id}"
    assert (model.local_dir / "padding.bin").stat().st_size == 11 * 2**20

    # an object changed after publishing: the download is refused and nothing is cached
    client.put_object(Bucket=bucket, Key=f"runs/scale/{run_id}/model.onnx", Body=b"tampered")
    with pytest.raises(ArtifactError, match="model.onnx: does not match the run's _manifest.json"):
        resolve_model(f"s3://{bucket}/runs/scale/{run_id}", tmp_path, tmp_path / "fresh", "file:///unused", options)
    assert os.listdir(tmp_path / "fresh") == []


def test_train_and_deploy_with_the_artifact_store_in_s3(s3_endpoint: str, bucket: str, tmp_path: Path,
                                                        example_dir: Path) -> None:
    env = {**CREDENTIALS, "FNSERVE_S3_ENDPOINT_URL": s3_endpoint, "FNSERVE_ARTIFACT_ROOT": f"s3://{bucket}/artifacts"}
    fn = function_copy(example_dir, tmp_path / "sentiment", model={"uri": "artifacts://sentiment/latest"})
    untrainable = function_copy(fn, tmp_path / "alone" / "sentiment", skip=("train.yaml",))
    router = Router(tmp_path / "state", env=env).start()
    try:
        result = router.cli("deploy", str(untrainable))  # no run, and no job beside it that could make one
        assert result.returncode == 1
        assert (f"spec.model.uri: artifacts://sentiment/latest: no complete run under s3://{bucket}/artifacts/sentiment"
                in result.stderr)

        result = router.cli("train", str(fn), "--follow", check=True)
        assert "fnserve-job: succeeded" in result.stdout and "revision 1" in result.stdout
        status, _, body = http("POST", f"{router.url}/v1/models/sentiment:predict",
                               {"instances": ["an awful, dull film"]})
        assert status == 200 and body["predictions"][0]["label"] == "negative"
        revision = json.loads(router.cli("status", "sentiment", "--json", check=True).stdout)
        assert revision["manifest"]["spec"]["model"]["uri"].startswith("artifacts://sentiment/2")

        edit_manifest(fn, model={"uri": f"s3://{bucket}/nothing-here"})
        result = router.cli("deploy", str(fn))
        assert result.returncode == 1
        assert f"spec.model.uri: s3://{bucket}/nothing-here: no objects under this prefix" in result.stderr
    finally:
        router.stop()
