"""The platform as a user meets it: `fnserve up` as a process, the example deployed, real clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.conftest import Router, alive, edit_manifest, function_copy, http, wait_for

pytestmark = pytest.mark.slow

POSITIVE = "what a wonderful film, I loved every minute"
NEGATIVE = "a terrible, boring waste of time"


def deploy(router: Router, path: Path) -> None:
    result = router.cli("deploy", str(path), check=True)
    assert "ready in" in result.stdout


def predict(router: Router, name: str, instances: list[object], **kw: object) -> tuple[int, Any, Any]:
    return http("POST", f"{router.url}/v1/models/{name}:predict", {"instances": instances}, **kw)


async def kserve_v1_and_v2(url: str) -> tuple[dict, object, dict, bool]:
    async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=60)) as v1:
        v1_result = await v1.infer(url, {"instances": [POSITIVE, NEGATIVE]}, model_name="sentiment")
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as v2:
        ready = await v2.is_model_ready(url, "sentiment")
        request = InferRequest("sentiment", [InferInput("text", [2], "BYTES", data=[POSITIVE, NEGATIVE])])
        v2_result = await v2.infer(url, request, model_name="sentiment")
    return v1_result, v2_result, {}, ready


def test_deploy_and_invoke_with_independent_clients(router: Router, example_dir: Path) -> None:
    deploy(router, example_dir)
    v1, v2, _, ready = asyncio.run(kserve_v1_and_v2(router.url))

    assert [p["label"] for p in v1["predictions"]] == ["positive", "negative"]
    assert all(0.5 < p["score"] <= 1.0 for p in v1["predictions"])
    assert ready is True
    outputs = {o.name: o for o in v2.outputs}
    assert set(outputs) == {"label", "score"}
    assert (outputs["label"].datatype, outputs["label"].shape) == ("BYTES", [2])
    assert (outputs["score"].datatype, outputs["score"].shape) == ("FP32", [2])
    assert [x.decode() if isinstance(x, bytes) else x for x in outputs["label"].data] == ["positive", "negative"]

    # plain HTTP, as curl sends it (-d labels the body as a form)
    status, _, body = http("POST", f"{router.url}/v1/models/sentiment:predict",
                           raw=json.dumps({"instances": [POSITIVE]}).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["predictions"][0]["label"] == "positive"

    status, _, meta = http("GET", f"{router.url}/v2/models/sentiment")
    assert status == 200
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("label", "BYTES", [-1]), ("score", "FP32", [-1])]
    assert http("GET", f"{router.url}/v1/models/sentiment")[0] == 200


def binary_infer_body(texts: list[str]) -> tuple[bytes, int]:
    """An Open Inference Protocol request with its tensor in the binary extension, as tritonclient sends it."""
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


def test_binary_tensor_bodies_pass_through_both_ways(router: Router, example_dir: Path) -> None:
    deploy(router, example_dir)
    body, header_length = binary_infer_body([POSITIVE, NEGATIVE])
    status, headers, payload = http("POST", f"{router.url}/v2/models/sentiment/infer", raw=body,
                                    headers={"Content-Type": "application/octet-stream",
                                             "Inference-Header-Content-Length": str(header_length)})
    assert status == 200, payload
    json_length = int(headers["Inference-Header-Content-Length"])
    meta = json.loads(payload[:json_length])
    blobs, offset = {}, json_length
    for output in meta["outputs"]:
        size = output["parameters"]["binary_data_size"]
        blobs[output["name"]] = payload[offset:offset + size]
        offset += size
    labels, pos = [], 0
    while pos < len(blobs["label"]):
        (n,) = struct.unpack_from("<I", blobs["label"], pos)
        labels.append(blobs["label"][pos + 4:pos + 4 + n].decode())
        pos += 4 + n
    assert labels == ["positive", "negative"]
    assert len(blobs["score"]) == 8


def test_errors_are_json_with_a_request_id(router: Router, example_dir: Path) -> None:
    deploy(router, example_dir)
    status, headers, body = predict(router, "nope", ["x"], headers={"X-Request-ID": "abc-123"})
    assert status == 404
    assert body == {"error": "function 'nope' not found", "requestId": "abc-123"}
    assert headers["x-request-id"] == "abc-123"
    assert http("GET", f"{router.url}/v2/models/nope/ready")[0] == 404

    status, headers, body = http("POST", f"{router.url}/v1/models/sentiment:predict", raw=b'{"instances": [',
                                 headers={"Content-Type": "application/json"})
    assert status == 400 and "error" in body and headers["x-request-id"]
    status, _, body = predict(router, "sentiment", [])
    assert status == 400 and body["error"] == '"instances" must be a non-empty list'
    status, _, body = predict(router, "sentiment", [""])
    assert status == 400 and "non-empty string" in body["error"]
    status, _, body = http("POST", f"{router.url}/v2/models/sentiment/infer",
                           {"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "unknown input 'txt'" in body["error"]
    status, _, body = http("GET", f"{router.url}/no/such/route")
    assert status == 404 and body["error"].startswith("no such route")


def test_cli_lists_inspects_logs_and_removes(router: Router, example_dir: Path) -> None:
    deploy(router, example_dir)
    listing = json.loads(router.cli("ls", "--json", check=True).stdout)["functions"]
    assert [(f["name"], f["revision"], f["ready"]) for f in listing] == [("sentiment", 1, True)]
    assert "sentiment" in router.cli("ls", check=True).stdout
    status = router.cli("status", "sentiment", check=True).stdout
    assert "ready:     yes" in status
    invoked = json.loads(router.cli("invoke", "sentiment", "-d", json.dumps({"instances": [NEGATIVE]}),
                                    check=True).stdout)
    assert invoked["predictions"][0]["label"] == "negative"
    assert "serving on http://127.0.0.1" in router.cli("logs", "sentiment", check=True).stdout

    pids = router.replica_pids()
    assert len(pids) == 1
    assert router.cli("rm", "sentiment", check=True).stdout.strip() == "sentiment: deleted"
    wait_for(lambda: not any(alive(p) for p in pids), 15, "the removed function's replica to exit")
    assert predict(router, "sentiment", [POSITIVE])[0] == 404
    missing = router.cli("rm", "sentiment")
    assert missing.returncode == 3 and missing.stderr.strip() == "fnserve: function 'sentiment' not found"


def test_openapi_describes_the_routes(router: Router) -> None:
    status, _, spec = http("GET", f"{router.url}/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/v1/models/{name}:predict", "/v2/models/{name}/infer", "/api/functions",
            "/api/functions/{name}"} <= set(spec["paths"])
    assert set(spec["paths"]["/api/functions"]) == {"get", "post"}
    chat = spec["paths"]["/openai/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    assert chat["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    assert {"/openai/v1/models", "/v2/models/{name}/generate", "/v2/models/{name}/generate_stream"} <= set(spec["paths"])


def test_invalid_deploys_change_nothing(router: Router, example_dir: Path, tmp_path: Path) -> None:
    bad = function_copy(example_dir, tmp_path / "bad")
    edit_manifest(bad, runtime="tensorflow", scaling={"minReplicas": 2, "maxReplicas": 1})
    result = router.cli("deploy", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{bad / 'function.yaml'}: spec.runtime: must be one of 'onnx', 'torch' or 'transformers' (got 'tensorflow')",
        f"{bad / 'function.yaml'}: spec.scaling.maxReplicas: must be ≥ minReplicas (got 1 < 2)"]

    # the router checks again, whatever the client did
    status, _, body = http("POST", f"{router.url}/api/functions",
                           {"manifest": yaml.safe_load((bad / "function.yaml").read_text()), "sourceDir": str(bad)},
                           headers=router.admin)
    assert status == 400 and [p["path"] for p in body["problems"]] == ["spec.runtime", "spec.scaling.maxReplicas"]

    no_model = function_copy(example_dir, tmp_path / "no-model")
    edit_manifest(no_model, model={"uri": "./missing"})
    result = router.cli("deploy", str(no_model))
    assert result.returncode == 1 and "spec.model.uri: ./missing: no model folder at" in result.stderr

    no_handler = function_copy(example_dir, tmp_path / "no-handler")
    edit_manifest(no_handler, handler="nothere:Handler")
    result = router.cli("deploy", str(no_handler))
    assert result.returncode == 1 and "spec.handler: no module nothere.py" in result.stderr

    broken = function_copy(example_dir, tmp_path / "broken")
    (broken / "handler.py").write_text("raise RuntimeError('handler import exploded')\n")
    result = router.cli("deploy", str(broken))
    assert result.returncode == 1 and "did not start" in result.stderr and "handler import exploded" in result.stderr

    assert json.loads(router.cli("ls", "--json", check=True).stdout) == {"functions": []}
    assert router.replica_pids() == set()


def test_failed_redeploy_keeps_the_old_revision_serving(router: Router, example_dir: Path, tmp_path: Path) -> None:
    fn = function_copy(example_dir, tmp_path / "fn")
    deploy(router, fn)
    (fn / "model" / "model.onnx").write_bytes(b"not a model")
    result = router.cli("deploy", str(fn))
    assert result.returncode == 1 and "revision 2 did not start" in result.stderr
    # revision 1 is scaled to zero: its next cold start loads its own snapshot, not the broken file
    assert predict(router, "sentiment", [POSITIVE])[2]["predictions"][0]["label"] == "positive"
    assert json.loads(router.cli("status", "sentiment", "--json", check=True).stdout)["revision"] == 1


def test_redeploy_switches_only_when_ready_and_drops_nothing(router: Router, warm_dir: Path) -> None:
    deploy(router, warm_dir)
    (old_pid,) = router.replica_pids()
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(predict(router, "sentiment", [POSITIVE], timeout=30)[0])

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: len(statuses) >= 5, 30, "traffic before the redeploy")
        deploy(router, warm_dir)
        seen = len(statuses)
        wait_for(lambda: len(statuses) >= seen + 5, 30, "traffic after the redeploy")
    finally:
        stop.set()
        sender.join()
    assert set(statuses) == {200}, statuses
    wait_for(lambda: not alive(old_pid), 30, "the old replica to be drained and stopped")
    (new_pid,) = router.replica_pids()
    assert new_pid != old_pid
    assert json.loads(router.cli("status", "sentiment", "--json", check=True).stdout)["revision"] == 2


def test_slow_replica_gives_504_and_a_dead_one_503(router: Router, warm_dir: Path, tmp_path: Path) -> None:
    fn = function_copy(warm_dir, tmp_path / "fn")
    edit_manifest(fn, timeout=1)
    deploy(router, fn)
    (pid,) = router.replica_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        status, _, body = predict(router, "sentiment", [POSITIVE])
        assert status == 504 and body["error"] == "function 'sentiment' did not answer within 1 s"

        results: list[tuple[int, Any, Any]] = []
        waiting = threading.Thread(target=lambda: results.append(predict(router, "sentiment", [POSITIVE])))
        waiting.start()
        wait_for(lambda: json.loads(router.cli("status", "sentiment", "--json").stdout)["replicas"][0]["outstanding"]
                 >= 1, 10, "the request to be in flight")
        os.kill(pid, signal.SIGKILL)
        waiting.join(30)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    status, headers, body = results[0]
    assert status in (503, 504), body  # killed mid-request: 503 unless the 1 s deadline struck first
    if status == 503:
        assert headers["retry-after"] == "1"
    # the crashed replica is replaced and the function serves again
    wait_for(lambda: predict(router, "sentiment", [POSITIVE])[0] == 200, 60, "the replica to be restarted")
    assert pid not in router.replica_pids()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_shutdown_leaves_no_replica_process(tmp_path: Path, warm_dir: Path, sig: signal.Signals) -> None:
    router = Router(tmp_path / "state").start()
    try:
        deploy(router, warm_dir)
        pids = router.replica_pids()
        assert len(pids) == 1 and all(alive(p) for p in pids)
    finally:
        code = router.stop(sig)
    # uvicorn re-raises the signal after a graceful shutdown: conventional exit statuses
    assert code == {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[sig]
    if sig != signal.SIGKILL:
        assert "Application shutdown complete" in router.log()
    wait_for(lambda: not any(alive(p) for p in pids), 15, f"replicas to exit after {sig.name}")


def test_restart_restores_deployed_functions(tmp_path: Path, example_dir: Path) -> None:
    state = tmp_path / "state"
    first = Router(state).start()
    try:
        deploy(first, example_dir)
    finally:
        first.stop()
    second = Router(state).start()
    try:
        status, _, body = predict(second, "sentiment", [NEGATIVE])
        assert status == 200 and body["predictions"][0]["label"] == "negative"
        assert json.loads(second.cli("status", "sentiment", "--json", check=True).stdout)["revision"] == 1
    finally:
        pids = second.replica_pids()
        second.stop()
    wait_for(lambda: not any(alive(p) for p in pids), 15, "replicas to exit")


def test_a_function_deployed_again_after_rm_runs_its_new_manifest(router: Router, example_dir: Path,
                                                                  tmp_path: Path) -> None:
    fn = function_copy(example_dir, tmp_path / "fn")
    deploy(router, fn)
    assert predict(router, "sentiment", [POSITIVE])[2]["predictions"][0]["label"] == "positive"
    router.cli("rm", "sentiment", check=True)
    (fn / "loud.py").write_text(
        "import numpy as np\n"
        "from handler import SentimentHandler\n\n\n"
        "class Loud(SentimentHandler):\n"
        "    def postprocess(self, outputs, inputs):\n"
        "        out = super().postprocess(outputs, inputs)\n"
        "        out['label'] = np.array([label.upper() for label in out['label']], dtype=object)\n"
        "        return out\n")
    edit_manifest(fn, handler="loud:Loud")
    deploy(router, fn)  # revision numbers start again at 1 after rm
    assert json.loads(router.cli("status", "sentiment", "--json", check=True).stdout)["revision"] == 1
    assert predict(router, "sentiment", [POSITIVE])[2]["predictions"][0]["label"] == "POSITIVE"
