"""What the proxy forwards: hop-by-hop headers never cross, inference headers always do."""

from __future__ import annotations

from fnserve.router.proxy import upstream_head

Request = tuple[list[tuple[bytes, bytes]], str]


def make_request(headers: list[tuple[str, str]], rid: str = "rid-1") -> Request:
    """Headers as the ASGI scope holds them (names lower-cased), and the request id."""
    return [(k.lower().encode(), v.encode()) for k, v in headers], rid


def upstream_headers(request: Request, *, json_default: bool) -> list[tuple[str, str]]:
    """The headers the replica is sent, parsed back from the request head the proxy writes."""
    headers, rid = request
    head = upstream_head("POST", "/v2/models/m/infer", b"replica", headers, rid, 10, json_default=json_default)
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines if line)
            if k not in ("host", "content-length")]  # the new hop's own


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
