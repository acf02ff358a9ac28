"""Checking an Open Inference Protocol request's framing before KServe decodes it.

KServe trusts what a client says about its own tensors: ``Inference-Header-Content-Length`` goes
through ``int()``, each ``binary_data_size`` slices the body wherever it points, BYTES length prefixes
are unpacked past the buffer's end and a shape is handed to ``reshape``. A wrong value is then a
ValueError deep in numpy (a 500, which also made uvicorn drop the connection), or — worse — a body that
does not add up is quietly read as something else (a 200). Here every stated size is checked against
the bytes that arrived, so a malformed request is a 400 that names what is wrong and a well-formed one
reaches KServe's own decoder, which then cannot fail.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest

#: Bytes per element of each fixed-size Open Inference Protocol datatype (BYTES is length-prefixed).
ITEM_SIZES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
              "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
DATATYPES = frozenset(ITEM_SIZES) | {"BYTES"}
#: Elements one tensor may declare; far above any real request, low enough that a shape cannot make
#: numpy allocate what the body never carried.
MAX_ELEMENTS = 2**31


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_tensor_header(where: str, datatype: Any, shape: Any) -> int:
    """A tensor's declared datatype and shape, checked; returns its number of elements."""
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: datatype must be one of {', '.join(sorted(DATATYPES))} (got {datatype!r})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidInput(f"{where}: shape must be a list of whole numbers >= 0 (got {shape!r})")
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise InvalidInput(f"{where}: shape {shape} declares {elements} elements, more than {MAX_ELEMENTS}")
    return elements


def _check_bytes_elements(where: str, raw: memoryview, elements: int) -> None:
    """A BYTES tensor is ``elements`` times a 4-byte little-endian length and that many bytes."""
    offset, found = 0, 0
    while offset < len(raw):
        if len(raw) - offset < 4:
            raise InvalidInput(f"{where}: {len(raw) - offset} stray bytes after element {found} "
                               f"(each BYTES element starts with a 4-byte length)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if length > len(raw) - offset:
            raise InvalidInput(f"{where}: element {found} says it is {length} bytes long, but only "
                               f"{len(raw) - offset} remain")
        offset += length
        found += 1
    if found != elements:
        raise InvalidInput(f"{where}: shape declares {elements} elements, the binary data holds {found}")


def check_binary_request(body: bytes, header_length: str | None) -> None:
    """Raise InvalidInput unless ``body`` is a JSON header of ``header_length`` bytes followed by exactly
    the binary tensor data its inputs declare."""
    if header_length is None:
        raise InvalidInput("a binary tensor request needs an Inference-Header-Content-Length header")
    text = header_length.strip()
    if not text.isdigit() or not text.isascii():
        raise InvalidInput(f"Inference-Header-Content-Length must be a whole number of bytes (got {header_length!r})")
    json_length = int(text)
    if not 0 < json_length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {json_length}, but the body has {len(body)} bytes")
    try:
        header = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the first {json_length} bytes are not a JSON inference header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise InvalidInput('the inference header must be a JSON object with a non-empty "inputs" list')
    outputs = header.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise InvalidInput('"outputs" must be a list of objects with a "name"')
    if header.get("parameters") is not None and not isinstance(header["parameters"], dict):
        raise InvalidInput('"parameters" must be an object')
    data = memoryview(body)[json_length:]
    offset = 0
    for index, tensor in enumerate(header["inputs"]):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f'{where}: must be an object with a "name"')
        where = f"input {tensor['name']!r}"
        elements = check_tensor_header(where, tensor.get("datatype"), tensor.get("shape"))
        parameters = tensor.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidInput(f'{where}: "parameters" must be an object')
        size = (parameters or {}).get("binary_data_size")
        if "data" in tensor:
            if size is not None:
                raise InvalidInput(f'{where}: has both "data" and a binary_data_size')
            continue
        if size is None:
            raise InvalidInput(f'{where}: needs "data" or parameters.binary_data_size')
        if not _is_count(size):
            raise InvalidInput(f"{where}: binary_data_size must be a whole number of bytes >= 0 (got {size!r})")
        if size > len(data) - offset:
            raise InvalidInput(f"{where}: binary_data_size is {size}, but only {len(data) - offset} bytes "
                               f"of binary data remain")
        raw = data[offset:offset + size]
        offset += size
        datatype = tensor["datatype"]
        if datatype == "BYTES":
            _check_bytes_elements(where, raw, elements)
        elif size != elements * ITEM_SIZES[datatype]:
            raise InvalidInput(f"{where}: shape {tensor['shape']} of {datatype} is "
                               f"{elements * ITEM_SIZES[datatype]} bytes, binary_data_size says {size}")
    if offset != len(data):
        raise InvalidInput(f"{len(data) - offset} bytes after the last tensor that no binary_data_size accounts for")


def check_json_request(request: InferenceRequest) -> None:
    """Datatypes and shapes of a JSON V2 request (KServe's model only says they are a str and ints)."""
    for tensor in request.inputs:
        elements = check_tensor_header(f"input {tensor.name!r}", tensor.datatype, tensor.shape)
        if isinstance(tensor.data, list) and tensor.data and not isinstance(tensor.data[0], list) \
                and len(tensor.data) != elements:
            raise InvalidInput(f"input {tensor.name!r}: shape {tensor.shape} declares {elements} elements, "
                               f"data holds {len(tensor.data)}")


class CheckedDataPlane(DataPlane):
    """KServe's DataPlane, with every V2 request's framing checked before it is decoded."""

    def decode_inference_request(self, body: bytes | InferenceRequest, headers: dict[str, str],
                                 model_name: str) -> InferRequest:
        if isinstance(body, bytes):
            check_binary_request(body, headers.get("inference-header-content-length"))
        else:
            check_json_request(body)
        return super().decode_inference_request(body, headers, model_name)
