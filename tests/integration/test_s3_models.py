"""s3:// model URIs against a real S3 API server (moto's, as a process on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from fnserve.storage import ArtifactError, fetch_s3
from tests.conftest import Router, edit_manifest, free_port, function_copy, http, wait_for

pytestmark = pytest.mark.slow

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fnserve-test", "AWS_SECRET_ACCESS_KEY": "fnserve-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return http("GET", f"{url}/moto-api/", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 30, "the S3 server to answer")
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, example_dir: Path) -> str:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"models-{free_port()}"
    client.create_bucket(Bucket=name)
    for file in sorted((example_dir / "model").iterdir()):
        client.upload_file(str(file), name, f"sentiment/run-1/{file.name}")
    return name


def test_fetch_downloads_once_and_reports_clear_errors(s3_endpoint: str, bucket: str, tmp_path: Path,
                                                       example_dir: Path) -> None:
    local = fetch_s3(f"s3://{bucket}/sentiment/run-1", tmp_path, s3_endpoint)
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in (example_dir / "model").iterdir())
    assert (local / "model.onnx").read_bytes() == (example_dir / "model" / "model.onnx").read_bytes()
    assert fetch_s3(f"s3://{bucket}/sentiment/run-1/", tmp_path, s3_endpoint) == local  # cached
    assert [p.name for p in tmp_path.iterdir()] == [local.name]  # no staging folder left behind

    with pytest.raises(ArtifactError, match="no objects under this prefix"):
        fetch_s3(f"s3://{bucket}/sentiment/run-9", tmp_path, s3_endpoint)
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket' does not exist"):
        fetch_s3("s3://no-such-bucket/x", tmp_path, s3_endpoint)


def test_deploy_from_s3(s3_endpoint: str, bucket: str, tmp_path: Path, example_dir: Path) -> None:
    fn = function_copy(example_dir, tmp_path / "fn", skip=("model",), model={"uri": f"s3://{bucket}/sentiment/run-1"})

    router = Router(tmp_path / "state", env={**CREDENTIALS, "FNSERVE_S3_ENDPOINT_URL": s3_endpoint}).start()
    try:
        router.cli("deploy", str(fn), check=True)
        status, _, body = http("POST", f"{router.url}/v1/models/sentiment:predict",
                               {"instances": ["an awful, dull film"]})
        assert status == 200 and body["predictions"][0]["label"] == "negative"

        edit_manifest(fn, model={"uri": f"s3://{bucket}/nothing-here"})
        result = router.cli("deploy", str(fn))
        assert result.returncode == 1
        assert f"spec.model.uri: s3://{bucket}/nothing-here: no objects under this prefix" in result.stderr
    finally:
        router.stop()
    assert os.listdir(tmp_path / "state" / "models")  # the download landed in the state dir's cache
