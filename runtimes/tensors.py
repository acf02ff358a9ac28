"""Named tensors and the two wire protocols that carry them.

Inside a replica every request becomes ``dict[str, np.ndarray]`` keyed by the function's public input
names, whatever protocol it arrived in; that keeps handlers and runtimes protocol-free (KServe's own
split between the data plane and the model). V1 uses the TensorFlow-Serving "row" format: each instance
is one row of the single input, or a mapping of input name to row when there are several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

Tensors = dict[str, np.ndarray]

# Open Inference Protocol datatypes and their numpy equivalents.
_NP_TYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a function's public signature; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype for a numpy array (strings and bytes are BYTES)."""
    if array.dtype.kind in ("O", "U", "S"):
        return "BYTES"
    for name, np_type in _NP_TYPES.items():
        if np_type is not np.object_ and array.dtype == np_type:
            return name
    raise InvalidInput(f"unsupported tensor dtype {array.dtype}")


def _decode_text(array: np.ndarray) -> np.ndarray:
    """BYTES arrive as bytes objects; handlers get str where the bytes are UTF-8 text."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        if isinstance(item, (bytes, bytearray)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                item = bytes(item)
        flat_out[i] = item
    return out


def _coerce(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    """Convert incoming data to the declared datatype and check its shape, or say why not."""
    try:
        if spec.datatype == "BYTES":
            array = _decode_text(np.asarray(value, dtype=object))
            if any(not isinstance(x, (str, bytes)) for x in array.reshape(-1)):
                raise ValueError("expected strings")
        else:
            array = np.asarray(value, dtype=_NP_TYPES[spec.datatype])
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where}: cannot be read as {spec.datatype} ({exc})") from None
    check_shape(spec, array, where)
    return array


def check_shape(spec: TensorSpec, array: np.ndarray, where: str) -> None:
    """Reject a tensor whose rank or fixed dimensions differ from the signature."""
    if len(spec.shape) != array.ndim or any(d not in (-1, a) for d, a in zip(spec.shape, array.shape, strict=False)):
        raise InvalidInput(f"{where}: shape must be {list(spec.shape)} (-1 = any), "
                           f"got {list(array.shape)}")


def from_v1(body: Any, inputs: list[TensorSpec]) -> Tensors:
    """``{"instances": [...]}`` → named tensors, one row per instance."""
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidInput('request body must be a JSON object with an "instances" list')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list')
    if len(inputs) == 1:
        return {inputs[0].name: _coerce(inputs[0], instances, "instances")}
    names = [spec.name for spec in inputs]
    for i, row in enumerate(instances):
        if not isinstance(row, dict) or set(row) != set(names):
            raise InvalidInput(f"instances[{i}]: must be an object with exactly the keys {names}")
    return {spec.name: _coerce(spec, [row[spec.name] for row in instances], f"instances[*].{spec.name}")
            for spec in inputs}


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of one output row."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_v1(outputs: Tensors, specs: list[TensorSpec]) -> dict[str, Any]:
    """Named output tensors → ``{"predictions": [...]}``, one entry per row."""
    names = [spec.name for spec in specs]
    rows = len(outputs[names[0]])
    if len(names) == 1:
        return {"predictions": [_plain(outputs[names[0]][i]) for i in range(rows)]}
    return {"predictions": [{n: _plain(outputs[n][i]) for n in names} for i in range(rows)]}


def from_v2(request: InferRequest, inputs: list[TensorSpec]) -> Tensors:
    """An Open Inference Protocol request → named tensors, checked against the signature."""
    by_name = {spec.name: spec for spec in inputs}
    given = {tensor.name for tensor in request.inputs}
    unknown = sorted(given - set(by_name))
    if unknown:
        raise InvalidInput(f"unknown input {unknown[0]!r}; this model takes {sorted(by_name)}")
    if len(given) != len(request.inputs):
        raise InvalidInput("each input may be given once; a name appears twice")
    missing = sorted(set(by_name) - given)
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r}; this model takes {sorted(by_name)}")
    tensors: Tensors = {}
    for tensor in request.inputs:
        spec = by_name[tensor.name]
        if tensor.datatype != spec.datatype:
            raise InvalidInput(f"input {spec.name!r}: datatype must be {spec.datatype} "
                               f"(got {tensor.datatype})")
        try:
            array = tensor.as_numpy()
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {spec.name!r}: data does not match shape {tensor.shape} ({exc})") \
                from None
        tensors[spec.name] = _coerce(spec, array, f"input {spec.name!r}")
    return tensors


def to_v2(request: InferRequest, outputs: Tensors, specs: list[TensorSpec], model_name: str) -> InferResponse:
    """Named output tensors → an Open Inference Protocol response (binary if the client asked)."""
    infer_outputs = []
    for spec in specs:
        array = outputs[spec.name]
        if spec.datatype == "BYTES":
            array = np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else s,
                                 otypes=[object])(array) if array.size else array.astype(object)
        out = InferOutput(name=spec.name, shape=list(array.shape), datatype=spec.datatype)
        out.set_data_from_numpy(array, binary_data=request.use_binary_outputs)
        infer_outputs.append(out)
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        infer_outputs=infer_outputs,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )


def as_datatype(spec: TensorSpec, array: Any) -> np.ndarray:
    """Cast a handler's or model's output to the declared datatype (numbers only)."""
    array = np.asarray(array)
    if spec.datatype == "BYTES":
        return array.astype(object)
    return array.astype(_NP_TYPES[spec.datatype], copy=False)
