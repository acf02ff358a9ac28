"""A corpus of malformed requests against a real router and real replicas.

Each case is sent as raw bytes on its own connection (so malformed request lines and headers reach the
server as sent), and must get a 4xx whose body is JSON with a string "error" — never a 5xx, never
another shape. Right after each, a valid request to the same function must succeed: a bad request may
not poison the router's pooled connection to the replica, the replica, or the state store.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Router, function_copy, http, manifest_of, running_router

pytestmark = pytest.mark.slow

MAX_BODY = 256 * 1024
TIMEOUTS = {"FNSERVE_MAX_BODY_BYTES": str(MAX_BODY), "FNSERVE_HEADER_TIMEOUT": "1", "FNSERVE_BODY_TIMEOUT": "1"}


@dataclass
class Case:
    id: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    """The exact status expected; None: any 4xx."""
    raw: bytes | None = None
    """The whole request as bytes, for requests no client library would send ({AUTH}: the admin key's header)."""
    admin: bool = True
    """Send the admin key (inference routes of a private function need a key too)."""
    pause: float = 0.0
    """Seconds to wait after sending ``raw`` before reading (slow clients)."""


def send(port: int, case: Case, admin_key: str) -> tuple[int, dict[str, str], bytes]:
    """Send one case on a fresh connection; the status, headers and body of the answer."""
    if case.raw is not None:
        data = case.raw.replace(b"{AUTH}", f"Authorization: Bearer {admin_key}".encode())
    else:
        headers = {"Host": "127.0.0.1", **case.headers}
        if case.admin and "Authorization" not in headers and "X-API-Key" not in headers:
            headers["Authorization"] = f"Bearer {admin_key}"
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            headers["Content-Length"] = str(len(case.body))
        head = f"{case.method} {case.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = head.encode("latin-1") + b"\r\n" + case.body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (and close) before it reads everything we send
        if case.pause:
            time.sleep(case.pause)  # the client stalls: the server's deadline is what is under test
        response = HTTPResponse(sock, method=case.method)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def v1(instances: Any) -> bytes:
    return json.dumps({"instances": instances}).encode()


def v2(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def text_input(**override: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"], **override}


def binary(inputs: list[dict[str, Any]], payload: bytes, header_length: str | None = None) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": inputs}).encode()
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": header_length if header_length is not None else str(len(header))}
    return header + payload, headers


def strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def text_tensor(size: Any, shape: Any = (1,)) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": list(shape), "parameters": {"binary_data_size": size}}


def features(size: Any, shape: Any = (1, 4), datatype: str = "FP32") -> dict[str, Any]:
    return {"name": "features", "datatype": datatype, "shape": list(shape), "parameters": {"binary_data_size": size}}


def bin_case(id: str, function: str, inputs: list[dict], payload: bytes, header_length: str | None = None,
             status: int | None = 400) -> Case:
    body, headers = binary(inputs, payload, header_length)
    return Case(id, "POST", f"/v2/models/{function}/infer", body, headers, status)


S_V1, S_V2 = "/v1/models/sentiment:predict", "/v2/models/sentiment/infer"
JSON = {"Content-Type": "application/json"}
ONE = strings(b"hello")
FOUR_FLOATS = struct.pack("<4f", 5.1, 3.5, 1.4, 0.2)
DEEP = b"[" * 5000 + b"]" * 5000

V1_CASES = [
    Case("v1-empty-body", "POST", S_V1, b"", JSON, 400),
    Case("v1-null", "POST", S_V1, b"null", JSON, 400),
    Case("v1-array", "POST", S_V1, b"[]", JSON, 400),
    Case("v1-string", "POST", S_V1, b'"x"', JSON, 400),
    Case("v1-object-without-instances", "POST", S_V1, b"{}", JSON, 400),
    Case("v1-instances-string", "POST", S_V1, b'{"instances": "x"}', JSON, 400),
    Case("v1-instances-empty", "POST", S_V1, v1([]), JSON, 400),
    Case("v1-instances-object", "POST", S_V1, b'{"instances": {"a": 1}}', JSON, 400),
    Case("v1-number-for-text", "POST", S_V1, v1([1]), JSON, 400),
    Case("v1-null-for-text", "POST", S_V1, v1([None]), JSON, 400),
    Case("v1-bool-for-text", "POST", S_V1, v1([True]), JSON, 400),
    Case("v1-nested-rows", "POST", S_V1, v1([["a"]]), JSON, 400),
    Case("v1-named-row-for-single-input", "POST", S_V1, v1([{"text": "a"}]), JSON, 400),
    Case("v1-truncated-json", "POST", S_V1, b'{"instances": [', JSON, 400),
    Case("v1-nan-literal", "POST", S_V1, b'{"instances": [NaN]}', JSON, 400),
    Case("v1-invalid-utf8", "POST", S_V1, b"\xff\xfe\xfd", JSON, 400),
    Case("v1-deep-nesting", "POST", S_V1, DEEP, JSON, 400),
    Case("v1-form-that-is-not-json", "POST", S_V1, b"instances=a&b=c", {}, 400),
    Case("v1-octet-stream-garbage", "POST", S_V1, b"\x00\x01binary", {"Content-Type": "application/octet-stream"}, 400),
    Case("v1-mixed-types", "POST", S_V1, v1(["a", 2, None]), JSON, 400),
    Case("iris-v1-wrong-width", "POST", "/v1/models/iris:predict", v1([[1.0, 2.0]]), JSON, 400),
    Case("iris-v1-text-features", "POST", "/v1/models/iris:predict", v1([["a", "b", "c", "d"]]), JSON, 400),
    Case("iris-v1-negative-measurement", "POST", "/v1/models/iris:predict", v1([[-1.0, 2.0, 3.0, 4.0]]), JSON, 400),
    Case("iris-v1-huge-number", "POST", "/v1/models/iris:predict", b'{"instances": [[1e309, 1, 1, 1]]}', JSON, 400),
]

V2_JSON_CASES = [
    Case("v2-empty-body", "POST", S_V2, b"", JSON, 400),
    Case("v2-empty-object", "POST", S_V2, b"{}", JSON, 400),
    Case("v2-inputs-string", "POST", S_V2, b'{"inputs": "x"}', JSON, 400),
    Case("v2-inputs-number-list", "POST", S_V2, b'{"inputs": [5]}', JSON, 400),
    Case("v2-inputs-empty", "POST", S_V2, v2(), JSON, 400),
    Case("v2-shape-not-numeric", "POST", S_V2, v2(text_input(shape=["a"])), JSON, 400),
    Case("v2-shape-negative", "POST", S_V2, v2(text_input(shape=[-1])), JSON, 400),
    Case("v2-shape-fractional", "POST", S_V2, v2(text_input(shape=[1.5])), JSON, 400),
    Case("v2-shape-not-a-list", "POST", S_V2, v2(text_input(shape=1)), JSON, 400),
    Case("v2-shape-too-many-elements", "POST", S_V2, v2(text_input(shape=[2**40, 2**40])), JSON, 400),
    Case("v2-shape-count-mismatch", "POST", S_V2, v2(text_input(shape=[2])), JSON, 400),
    Case("v2-wrong-datatype", "POST", S_V2, v2(text_input(datatype="FP32", data=[1.0])), JSON, 400),
    Case("v2-unknown-datatype", "POST", S_V2, v2(text_input(datatype="STRING")), JSON, 400),
    Case("v2-unknown-input", "POST", S_V2, v2(text_input(name="words")), JSON, 400),
    Case("v2-missing-name", "POST", S_V2, v2({"datatype": "BYTES", "shape": [1], "data": ["x"]}), JSON, 400),
    Case("v2-missing-data", "POST", S_V2, v2({"name": "text", "datatype": "BYTES", "shape": [1]}), JSON, 400),
    Case("v2-data-null", "POST", S_V2, v2(text_input(data=None)), JSON, 400),
    Case("v2-nested-data-count-mismatch", "POST", S_V2, v2(text_input(data=[["x", "y"]])), JSON, 400),
    Case("v2-two-inputs-same-name", "POST", S_V2, v2(text_input(), text_input()), JSON, 400),
    Case("v2-outputs-not-a-list", "POST", S_V2, v2(text_input(), outputs="label"), JSON, 400),
    Case("v2-parameters-not-an-object", "POST", S_V2, v2(text_input(), parameters="x"), JSON, 400),
    Case("v2-id-not-a-string", "POST", S_V2, v2(text_input(), id=5), JSON, 400),
    Case("v2-fp16-as-json", "POST", "/v2/models/iris/infer",
         v2({"name": "features", "datatype": "FP16", "shape": [1, 4], "data": [1, 2, 3, 4]}), JSON, 400),
    Case("v2-invalid-json", "POST", S_V2, b'{"inputs": [}', JSON, 400),
    Case("v2-deep-nesting", "POST", S_V2, DEEP, JSON, 400),
]

V2_BINARY_CASES = [
    bin_case("bin-header-length-not-a-number", "sentiment", [text_tensor(9)], ONE, "abc"),
    bin_case("bin-header-length-negative", "sentiment", [text_tensor(9)], ONE, "-1"),
    bin_case("bin-header-length-zero", "sentiment", [text_tensor(9)], ONE, "0"),
    bin_case("bin-header-length-fractional", "sentiment", [text_tensor(9)], ONE, "1.5"),
    bin_case("bin-header-length-past-the-body", "sentiment", [text_tensor(9)], ONE, "100000"),
    bin_case("bin-header-length-cuts-the-json", "sentiment", [text_tensor(9)], ONE, "10"),
    Case("bin-no-header-length", "POST", S_V2, b'{"inputs": []}' + ONE, {"Content-Type": "application/octet-stream"}, 400),
    bin_case("bin-size-negative", "sentiment", [text_tensor(-3)], ONE),
    bin_case("bin-size-fractional", "sentiment", [text_tensor(2.5)], ONE),
    bin_case("bin-size-string", "sentiment", [text_tensor("9")], ONE),
    bin_case("bin-size-bool", "sentiment", [text_tensor(True)], ONE),
    bin_case("bin-size-larger-than-sent", "sentiment", [text_tensor(90)], ONE),
    bin_case("bin-size-smaller-than-sent", "sentiment", [text_tensor(9)], ONE + b"extra"),
    bin_case("bin-length-prefix-overruns", "sentiment", [text_tensor(9)], struct.pack("<I", 50) + b"hello"),
    bin_case("bin-stray-bytes-after-element", "sentiment", [text_tensor(11)], ONE + b"\x01\x02"),
    bin_case("bin-element-count-mismatch", "sentiment", [text_tensor(9, (2,))], ONE),
    bin_case("bin-shape-negative", "sentiment", [text_tensor(9, (-1,))], ONE),
    bin_case("bin-data-and-binary-size", "sentiment", [{**text_tensor(9), "data": ["x"]}], ONE),
    bin_case("bin-neither-data-nor-size", "sentiment", [{"name": "text", "datatype": "BYTES", "shape": [1]}], ONE),
    bin_case("bin-inputs-missing", "sentiment", [], ONE),
    Case("bin-header-not-json", "POST", S_V2, b"not json at all" + ONE,
         {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "15"}, 400),
    Case("bin-header-is-a-list", "POST", S_V2, b"[1, 2, 3]" + ONE,
         {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "9"}, 400),
    bin_case("bin-input-not-an-object", "sentiment", ["text"], ONE),  # type: ignore[list-item]
    bin_case("bin-parameters-not-an-object", "sentiment", [{**text_tensor(9), "parameters": 9}], ONE),
    bin_case("bin-unknown-datatype", "sentiment", [{**text_tensor(9), "datatype": "STR"}], ONE),
    bin_case("iris-bin-bytes-not-a-multiple-of-fp32", "iris", [features(15)], FOUR_FLOATS[:15]),
    bin_case("iris-bin-size-disagrees-with-shape", "iris", [features(16, (2, 4))], FOUR_FLOATS),
    bin_case("iris-bin-wrong-datatype", "iris", [features(16, (1, 2), "INT64")], FOUR_FLOATS),
    bin_case("iris-bin-wrong-width", "iris", [features(8, (1, 2))], FOUR_FLOATS[:8]),
    bin_case("iris-bin-nan-measurement", "iris", [features(16)], struct.pack("<4f", float("nan"), 1, 1, 1)),
]


def key_body(**fields: Any) -> bytes:
    return json.dumps({"name": "corpus", **fields}).encode()


ADMIN_CASES = [
    Case("keys-rps-1e309", "POST", "/api/keys", b'{"name": "x", "limits": {"rps": 1e309}}', JSON, 400),
    Case("keys-rps-nan", "POST", "/api/keys", b'{"name": "x", "limits": {"rps": NaN}}', JSON, 400),
    Case("keys-rps-infinity-token", "POST", "/api/keys", b'{"name": "x", "limits": {"rps": Infinity}}', JSON, 400),
    Case("keys-rps-negative", "POST", "/api/keys", key_body(limits={"rps": -1}), JSON, 400),
    Case("keys-rps-zero", "POST", "/api/keys", key_body(limits={"rps": 0}), JSON, 400),
    Case("keys-rps-text", "POST", "/api/keys", key_body(limits={"rps": "fast"}), JSON, 400),
    Case("keys-rps-absurd", "POST", "/api/keys", key_body(limits={"rps": 1e300}), JSON, 400),
    Case("keys-burst-fractional", "POST", "/api/keys", key_body(limits={"burst": 1.5}), JSON, 400),
    Case("keys-burst-huge", "POST", "/api/keys", key_body(limits={"burst": 10**20}), JSON, 400),
    Case("keys-daily-negative", "POST", "/api/keys", key_body(limits={"daily": -1}), JSON, 400),
    Case("keys-limits-unknown-name", "POST", "/api/keys", key_body(limits={"rpm": 5}), JSON, 400),
    Case("keys-limits-not-an-object", "POST", "/api/keys", key_body(limits="lots"), JSON, 400),
    Case("keys-expires-1e309", "POST", "/api/keys", b'{"name": "x", "expiresIn": 1e309}', JSON, 400),
    Case("keys-expires-negative", "POST", "/api/keys", key_body(expiresIn=-5), JSON, 400),
    Case("keys-expires-text", "POST", "/api/keys", key_body(expiresIn="soon"), JSON, 400),
    Case("keys-expires-list", "POST", "/api/keys", key_body(expiresIn=[]), JSON, 400),
    Case("keys-expires-past-a-century", "POST", "/api/keys", key_body(expiresIn="40000d"), JSON, 400),
    Case("keys-name-missing", "POST", "/api/keys", b"{}", JSON, 400),
    Case("keys-name-blank", "POST", "/api/keys", b'{"name": "   "}', JSON, 400),
    Case("keys-name-number", "POST", "/api/keys", b'{"name": 123}', JSON, 400),
    Case("keys-name-too-long", "POST", "/api/keys", key_body(name="n" * 10_000), JSON, 400),
    Case("keys-scopes-string", "POST", "/api/keys", key_body(scopes="admin"), JSON, 400),
    Case("keys-scopes-empty", "POST", "/api/keys", key_body(scopes=[]), JSON, 400),
    Case("keys-scopes-unknown", "POST", "/api/keys", key_body(scopes=["root"]), JSON, 400),
    Case("keys-scopes-number", "POST", "/api/keys", key_body(scopes=[1]), JSON, 400),
    Case("keys-tenant-blank", "POST", "/api/keys", key_body(tenant=""), JSON, 400),
    Case("keys-unknown-field", "POST", "/api/keys", key_body(owner="me"), JSON, 400),
    Case("keys-body-array", "POST", "/api/keys", b"[]", JSON, 400),
    Case("keys-body-invalid-json", "POST", "/api/keys", b"{name: x}", JSON, 400),
    Case("keys-body-deep", "POST", "/api/keys", b'{"name": ' + b"[" * 100 + b"]" * 100 + b"}", JSON, 400),
    Case("keys-body-very-deep", "POST", "/api/keys", b'{"name": ' + DEEP + b"}", JSON, 400),
    Case("keys-huge-integer", "POST", "/api/keys", b'{"name": "x", "limits": {"daily": ' + b"9" * 5000 + b"}}", JSON, 400),
    Case("tenant-rps-1e309", "PUT", "/api/tenants/acme", b'{"rps": 1e309}', JSON, 400),
    Case("tenant-rps-negative", "PUT", "/api/tenants/acme", b'{"rps": -2}', JSON, 400),
    Case("tenant-unknown-field", "PUT", "/api/tenants/acme", b'{"rpm": 2}', JSON, 400),
    Case("tenant-body-array", "PUT", "/api/tenants/acme", b"[1]", JSON, 400),
    Case("rotate-grace-1e309", "POST", "/api/keys/ffffffffffff/rotate", b'{"grace": 1e309}', JSON, 400),
    Case("rotate-grace-negative", "POST", "/api/keys/ffffffffffff/rotate", b'{"grace": -1}', JSON, 400),
    Case("rotate-unknown-key", "POST", "/api/keys/ffffffffffff/rotate", b"{}", JSON, 404),
    Case("revoke-unknown-key", "DELETE", "/api/keys/ffffffffffff", b"", {}, 404),
    Case("rollback-to-text", "POST", "/api/functions/sentiment/rollback", b'{"to": "one"}', JSON, 400),
    Case("rollback-to-zero", "POST", "/api/functions/sentiment/rollback", b'{"to": 0}', JSON, 400),
    Case("rollback-to-bool", "POST", "/api/functions/sentiment/rollback", b'{"to": true}', JSON, 400),
    Case("rollback-to-beyond-any-integer", "POST", "/api/functions/sentiment/rollback",
         b'{"to": 324670018636657763287040}', JSON, 400),  # found by the fuzz test: SQLite overflowed
    Case("rollback-to-missing-revision", "POST", "/api/functions/sentiment/rollback", b'{"to": 999}', JSON, 400),
    Case("rollback-unknown-function", "POST", "/api/functions/nosuch/rollback", b"{}", JSON, 404),
    Case("deploy-no-manifest", "POST", "/api/functions", b'{"sourceDir": "/tmp"}', JSON, 400),
    Case("deploy-manifest-string", "POST", "/api/functions", b'{"manifest": "x", "sourceDir": "/tmp"}', JSON, 400),
    Case("deploy-invalid-manifest", "POST", "/api/functions", b'{"manifest": {}, "sourceDir": "/tmp"}', JSON, 400),
    Case("deploy-relative-source", "POST", "/api/functions",
         json.dumps({"manifest": {"kind": "Function"}, "sourceDir": "functions/x"}).encode(), JSON, 400),
    Case("deploy-files-not-an-object", "POST", "/api/functions", b'{"manifest": {}, "files": ["a"]}', JSON, 400),
    Case("deploy-files-bad-base64", "POST", "/api/functions", b'{"manifest": {}, "files": {"a.py": "%%%"}}', JSON, 400),
    Case("deploy-files-escape-the-folder", "POST", "/api/functions", json.dumps(
        {"manifest": {}, "files": {"../../evil.py": base64.b64encode(b"x").decode()}}).encode(), JSON, 400),
    Case("deploy-nan-in-manifest", "POST", "/api/functions",
         b'{"manifest": {"spec": {"timeout": NaN}}, "sourceDir": "/tmp"}', JSON, 400),
    Case("jobs-params-string", "POST", "/api/jobs", b'{"manifest": {}, "sourceDir": "/tmp", "params": "x"}', JSON, 400),
    Case("jobs-invalid-manifest", "POST", "/api/jobs", b'{"manifest": {"kind": "TrainingJob"}, "sourceDir": "/tmp"}',
         JSON, 400),
    Case("jobs-limit-text", "GET", "/api/jobs?limit=lots", status=400),
    Case("jobs-unknown-id", "GET", "/api/jobs/nosuchjob", status=404),
    Case("jobs-cancel-unknown", "POST", "/api/jobs/nosuchjob/cancel", status=404),
    Case("jobs-logs-unknown", "GET", "/api/jobs/nosuchjob/logs?follow=1", status=404),
    Case("usage-since-not-a-date", "GET", "/api/usage?since=yesterday", status=400),
    Case("logs-tail-text", "GET", "/api/functions/sentiment/logs?tail=all", status=400),
    Case("function-unknown", "GET", "/api/functions/nosuch", status=404),
]

AUTH_CASES = [
    Case("auth-none-on-admin", "GET", "/api/keys", admin=False, status=401),
    Case("auth-none-on-private-function", "POST", S_V1, v1(["a"]), JSON, admin=False, status=401),
    Case("auth-empty-bearer", "GET", "/api/keys", headers={"Authorization": "Bearer "}, status=401),
    Case("auth-basic-scheme", "GET", "/api/keys", headers={"Authorization": "Basic dXNlcjpwYXNz"}, status=401),
    Case("auth-malformed-token", "GET", "/api/keys", headers={"Authorization": "Bearer fns_nope"}, status=401),
    Case("auth-unknown-key", "GET", "/api/keys",
         headers={"Authorization": "Bearer fns_ffffffffffff_" + "0" * 40}, status=401),
    Case("auth-empty-x-api-key", "GET", "/api/keys", headers={"X-API-Key": ""}, admin=False, status=401),
    Case("auth-huge-header", "GET", "/api/keys", headers={"Authorization": "Bearer " + "a" * 16_000}, status=401),
    Case("auth-latin1-garbage", "GET", "/api/keys", raw=b"GET /api/keys HTTP/1.1\r\nHost: x\r\n"
         b"Authorization: Bearer \xff\xfe\r\nContent-Length: 0\r\n\r\n", status=401),
]

NAME_CASES = [
    Case("name-unknown-function", "POST", "/v1/models/nosuch:predict", v1(["a"]), JSON, 404),
    Case("name-nul-byte", "POST", "/v1/models/%00:predict", v1(["a"]), JSON, 404),
    Case("name-dot-dot", "POST", "/v1/models/..%2F..:predict", v1(["a"]), JSON, 404),
    Case("name-space", "POST", "/v1/models/a%20b:predict", v1(["a"]), JSON, 404),
    Case("name-very-long", "POST", f"/v1/models/{'a' * 3000}:predict", v1(["a"]), JSON, 404),
    Case("name-unicode", "POST", "/v1/models/%E2%98%83:predict", v1(["a"]), JSON, 404),
    Case("name-upper-case", "GET", "/v2/models/SENTIMENT", status=404),
    Case("version-not-a-number", "GET", "/v2/models/sentiment/versions/abc", status=404),
    Case("version-not-serving", "POST", "/v2/models/sentiment/versions/999/infer", v2(text_input()), JSON, 404),
    Case("route-unknown", "GET", "/v3/everything", status=404),
    Case("route-unknown-admin", "GET", "/api/nothing-here", status=404),
]

METHOD_CASES = [
    Case("method-put-on-predict", "PUT", S_V1, v1(["a"]), JSON, 405),
    Case("method-delete-on-health", "DELETE", "/v2/health/live", status=405),
    Case("method-patch-on-keys", "PATCH", "/api/keys", b"{}", JSON, 405),
    Case("method-unknown", "FOO", "/", raw=b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", status=400),
    Case("request-line-garbage", "GET", "/", raw=b"this is not http\r\n\r\n", status=400),
    Case("request-line-bad-version", "GET", "/", raw=b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", status=400),
    Case("header-without-colon", "GET", "/", raw=b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
         status=400),
    Case("header-space-before-colon", "GET", "/",
         raw=b"GET /v2/health/live HTTP/1.1\r\nHost : x\r\n\r\n", status=400),
    Case("content-length-not-a-number", "POST", S_V1,
         raw=b"POST /v1/models/sentiment:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", status=400),
    Case("content-length-negative", "POST", S_V1,
         raw=b"POST /v1/models/sentiment:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", status=400),
    Case("content-length-twice", "POST", S_V1, raw=b"POST /v1/models/sentiment:predict HTTP/1.1\r\nHost: x\r\n"
         b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n12345", status=400),
    Case("chunk-size-garbage", "POST", S_V1, raw=b"POST /v1/models/sentiment:predict HTTP/1.1\r\nHost: x\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", status=400),
    Case("nul-in-path", "GET", "/", raw=b"GET /v2/\x00health HTTP/1.1\r\nHost: x\r\n\r\n", status=400),
]

SIZE_AND_TIME_CASES = [
    Case("body-over-the-limit-declared", "POST", S_V1, headers={**JSON, "Content-Length": str(MAX_BODY + 1)},
         raw=None, status=413),
    Case("body-over-the-limit-chunked", "POST", S_V1, raw=b"POST /v1/models/sentiment:predict HTTP/1.1\r\n"
         b"Host: x\r\n{AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n"
                                                                       for _ in range(5)), status=413),
    Case("admin-body-over-the-limit", "POST", "/api/keys", raw=b"POST /api/keys HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n" for _ in range(5)),
         status=413),
    Case("headers-too-slow", "GET", "/", raw=b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: 1", pause=1.5,
         status=408),
    Case("body-stalls", "POST", S_V1, raw=b"POST /v1/models/sentiment:predict HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n"
         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"instances\"", pause=1.5, status=408),
]

CORPUS = (V1_CASES + V2_JSON_CASES + V2_BINARY_CASES + ADMIN_CASES + AUTH_CASES + NAME_CASES + METHOD_CASES
          + SIZE_AND_TIME_CASES)


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    assert len(CORPUS) >= 100
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, warm_dir: Path) -> Iterator[Router]:
    """A router with the example (warm, private) and iris (FP32 tensors, trained by its own job)."""
    work = tmp_path_factory.mktemp("hostile")
    with running_router(work / "state", env=TIMEOUTS) as router:
        router.cli("deploy", str(function_copy(warm_dir, work / "sentiment", auth={"public": False})), check=True)
        iris = function_copy(ROOT / "functions" / "iris", work / "iris", skip=("model",),
                             scaling={**manifest_of(ROOT / "functions" / "iris")["spec"]["scaling"], "minReplicas": 1})
        router.cli("deploy", str(iris), check=True)
        yield router


def good_request(router: Router, case: Case) -> tuple[int, Any]:
    """A valid request to the function the case aimed at (the example unless it was iris)."""
    if "iris" in case.id:
        status, _, body = http("POST", f"{router.url}/v1/models/iris:predict",
                               {"instances": [[5.1, 3.5, 1.4, 0.2]]}, headers=router.admin)
    else:
        status, _, body = http("POST", f"{router.url}{S_V1}", {"instances": ["a lovely film"]}, headers=router.admin)
    return status, body


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_bad_input_gets_a_json_4xx_and_the_next_request_succeeds(platform: Router, case: Case) -> None:
    status, headers, body = send(platform.port, case, platform.admin_key)
    assert 400 <= status < 500, (status, body[:300])
    if case.status is not None:
        assert status == case.status, body[:300]
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error
    assert good_request(platform, case)[0] == 200


def test_nothing_invalid_was_stored_and_no_traceback_was_logged(platform: Router) -> None:
    for path in ("/api/keys", "/api/tenants", "/api/functions", "/api/jobs", "/api/usage"):
        status, _, body = http("GET", f"{platform.url}{path}", headers=platform.admin)
        assert status == 200, (path, body)
    keys = platform.api.keys()["keys"]
    assert [k["name"] for k in keys] == ["admin"]  # not one corpus request created a key
    assert platform.api.tenants() == {"tenants": {}}
    assert "Traceback" not in platform.log()
    replica_logs = "".join(p.read_text(errors="replace") for p in (platform.state_dir / "logs").rglob("*.log"))
    assert "Traceback" not in replica_logs
