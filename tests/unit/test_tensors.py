"""V1 rows and V2 tensors ↔ named numpy tensors, and the errors a client sees for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from runtimes import tensors as wire
from runtimes.tensors import TensorSpec

TEXT = [TensorSpec("text", "BYTES", (-1,))]
FEATURES = [TensorSpec("x", "FP32", (-1, 3))]
TWO = [TensorSpec("a", "INT64", (-1,)), TensorSpec("b", "FP32", (-1, 2))]


def test_v1_single_input_rows_become_one_tensor() -> None:
    out = wire.from_v1({"instances": ["good", "bad"]}, TEXT)
    assert out["text"].tolist() == ["good", "bad"]
    out = wire.from_v1({"instances": [[1, 2, 3], [4, 5, 6]]}, FEATURES)
    assert out["x"].dtype == np.float32 and out["x"].shape == (2, 3)


def test_v1_several_inputs_take_one_object_per_row() -> None:
    out = wire.from_v1({"instances": [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}]}, TWO)
    assert out["a"].tolist() == [1, 2] and out["b"].shape == (2, 2)
    with pytest.raises(InvalidInput, match=r"instances\[1\]: must be an object with exactly the keys"):
        wire.from_v1({"instances": [{"a": 1, "b": [1, 2]}, {"a": 2}]}, TWO)


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": []}, 'must be a JSON object with an "instances" list'),
    ([1, 2], 'must be a JSON object with an "instances" list'),
    ({"instances": []}, '"instances" must be a non-empty list'),
    ({"instances": "text"}, '"instances" must be a non-empty list'),
])
def test_v1_body_errors(body: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        wire.from_v1(body, TEXT)


def test_v1_shape_and_type_errors_say_what_was_expected() -> None:
    with pytest.raises(InvalidInput, match=r"shape must be \[-1, 3\] \(-1 = any\), got \[1, 2\]"):
        wire.from_v1({"instances": [[1, 2]]}, FEATURES)
    with pytest.raises(InvalidInput, match="cannot be read as FP32"):
        wire.from_v1({"instances": [["a", "b", "c"]]}, FEATURES)
    with pytest.raises(InvalidInput, match="cannot be read as BYTES"):
        wire.from_v1({"instances": [1, 2]}, TEXT)


def test_v1_predictions_are_rows_or_objects() -> None:
    label = TensorSpec("label", "BYTES", (-1,))
    score = TensorSpec("score", "FP32", (-1,))
    outputs = {"label": np.array([b"positive", "negative"], dtype=object),
               "score": np.array([0.9, 0.8], dtype=np.float32)}
    assert wire.to_v1(outputs, [label]) == {"predictions": ["positive", "negative"]}
    both = wire.to_v1(outputs, [label, score])["predictions"]
    assert both[0]["label"] == "positive" and both[1]["score"] == pytest.approx(0.8)


def v2_request(*inputs: InferInput, binary_output: bool = False) -> InferRequest:
    return InferRequest("m", list(inputs), request_id="r1",
                        parameters={"binary_data_output": True} if binary_output else None)


def test_v2_tensors_are_checked_against_the_signature() -> None:
    good = InferInput("x", [1, 3], "FP32", data=[1.0, 2.0, 3.0])
    assert wire.from_v2(v2_request(good), FEATURES)["x"].shape == (1, 3)
    with pytest.raises(InvalidInput, match=r"unknown input 'y'; this model takes \['x'\]"):
        wire.from_v2(v2_request(InferInput("y", [1, 3], "FP32", data=[1, 2, 3])), FEATURES)
    with pytest.raises(InvalidInput, match="missing input 'b'"):
        wire.from_v2(v2_request(InferInput("a", [1], "INT64", data=[1])), TWO)
    with pytest.raises(InvalidInput, match="input 'x': datatype must be FP32 \\(got INT32\\)"):
        wire.from_v2(v2_request(InferInput("x", [1, 3], "INT32", data=[1, 2, 3])), FEATURES)


def test_v2_bytes_arrive_as_text_for_handlers() -> None:
    tensor = InferInput("text", [2], "BYTES", data=["héllo", "world"])
    assert wire.from_v2(v2_request(tensor), TEXT)["text"].tolist() == ["héllo", "world"]


def test_v2_response_has_declared_names_shapes_and_datatypes() -> None:
    specs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))]
    outputs = {"label": np.array(["positive"], dtype=object), "score": np.array([0.5], dtype=np.float32)}
    body, _ = wire.to_v2(v2_request(), outputs, specs, "m").to_rest()
    assert [(o["name"], o["shape"], o["datatype"]) for o in body["outputs"]] == [
        ("label", [1], "BYTES"), ("score", [1], "FP32")]
    assert body["outputs"][0]["data"] == ["positive"]


def test_v2_binary_outputs_when_asked() -> None:
    specs = [TensorSpec("score", "FP32", (-1,))]
    response = wire.to_v2(v2_request(binary_output=True), {"score": np.array([0.25], np.float32)}, specs, "m")
    body, json_length = response.to_rest()
    assert isinstance(body, bytes) and json_length is not None
    assert np.frombuffer(body[json_length:], np.float32).tolist() == [0.25]
