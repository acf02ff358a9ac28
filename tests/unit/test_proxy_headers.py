"""What the proxy forwards: hop-by-hop headers never cross, inference headers always do."""

from __future__ import annotations

from starlette.requests import Request

from fnserve.router.proxy import upstream_headers


def make_request(headers: list[tuple[str, str]], rid: str = "rid-1") -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers], "state": {"request_id": rid}}
    return Request(scope)


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    request = make_request([("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "5"), ("TE", "trailers"),
                            ("Transfer-Encoding", "chunked"), ("X-Secret-Hop", "1"), ("Host", "router"),
                            ("Content-Length", "10"), ("Content-Type", "application/octet-stream"),
                            ("Inference-Header-Content-Length", "42"), ("Content-Encoding", "gzip")])
    sent = dict(upstream_headers(request, json_default=True))
    for gone in ("connection", "keep-alive", "te", "transfer-encoding", "x-secret-hop", "host", "content-length"):
        assert gone not in sent
    assert sent["inference-header-content-length"] == "42"
    assert sent["content-type"] == "application/octet-stream"
    assert sent["content-encoding"] == "gzip"
    assert sent["x-request-id"] == "rid-1"


def test_curl_form_bodies_are_labelled_json_on_inference_routes() -> None:
    form = make_request([("Content-Type", "application/x-www-form-urlencoded")])
    assert dict(upstream_headers(form, json_default=True))["content-type"] == "application/json"
    assert dict(upstream_headers(form, json_default=False))["content-type"] == "application/x-www-form-urlencoded"
    assert dict(upstream_headers(make_request([]), json_default=True))["content-type"] == "application/json"


def test_identity_encoding_unless_the_client_accepts_compression() -> None:
    assert dict(upstream_headers(make_request([]), json_default=False))["accept-encoding"] == "identity"
    gz = make_request([("Accept-Encoding", "gzip")])
    assert dict(upstream_headers(gz, json_default=False))["accept-encoding"] == "gzip"
