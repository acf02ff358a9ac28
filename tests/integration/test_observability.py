"""What happened to this request? A real router and replica, a real OTLP/HTTP receiver on loopback: a
request sent with a ``traceparent`` is found by its ids in the router's access line, in the replica's log
and in the received spans, whose parent/child links cross the two processes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FNSERVE, Router, function_copy, http, running_router, wait_for
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

SERVER, CLIENT = 2, 3  # the protocol's SpanKind numbers


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def access_line(router: Router, request_id: str) -> dict[str, Any] | None:
    return next((line for line in json_lines(router.log())
                 if line.get("logger") == "fnserve.access" and line.get("request_id") == request_id), None)


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[str]:
    """The names of a span's ancestors, nearest first."""
    names = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


@pytest.fixture(scope="module")
def private_dir(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example behind an API key, so the request passes auth (and its span)."""
    return function_copy(example_dir, tmp_path_factory.mktemp("private") / "sentiment", auth={"public": False})


def test_a_request_with_a_traceparent_is_followed_across_router_and_replica(tmp_path: Path, private_dir: Path) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_BSP_SCHEDULE_DELAY": "100", "FNSERVE_LOG_FORMAT": "json"}
    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        with running_router(tmp_path / "state", env=env) as router:
            router.cli("deploy", str(private_dir), check=True)
            trace_id, client_span = os.urandom(16).hex(), os.urandom(8).hex()
            status, headers, body = http("POST", f"{router.url}/v1/models/sentiment:predict",
                                         {"instances": ["what a wonderful film"]},
                                         headers={**router.admin, "traceparent": f"00-{trace_id}-{client_span}-01"})
            assert status == 200, body
            request_id = headers["X-Request-ID"]

            # the router's access line: both ids, and what happened
            line = wait_for(lambda: access_line(router, request_id), 10, "the router's access line")
            assert line["trace_id"] == trace_id
            assert line["function"] == "sentiment" and line["revision"] == 1 and line["status"] == 200
            assert line["cold_start_ms"] > 0 and 0 < line["upstream_ms"] <= line["duration_ms"]
            assert line["key_id"] == router.admin_key.split("_")[1]
            assert line["bytes_in"] == len(b"{\"instances\": [\"what a wonderful film\"]}") and line["bytes_out"] > 20

            # the replica's line, as `fnserve logs` shows it (and no liveness probe in it)
            logs = router.cli("logs", "sentiment", check=True).stdout
            replica = [line for line in json_lines(logs) if line.get("request_id") == request_id]
            assert any(line["logger"] == "fnserve.access" and line["trace_id"] == trace_id and line["status"] == 200
                       and line["component"] == "replica" for line in replica), logs
            assert not [line for line in json_lines(logs) if line.get("logger") == "fnserve.access"
                        and line.get("method") == "GET"], "liveness probes are not logged"

            spans = wait_for(lambda: (found := receiver.trace(trace_id)) and
                             {"upstream", "model"} <= {s.name for s in found} and found, 10, "the spans")
    by_id = {span.span_id: span for span in spans}
    named = {span.name: span for span in spans}
    root = named["POST /v1/models/{name}:predict"]
    assert (root.service, root.kind, root.parent_span_id) == ("fnserve-router", SERVER, client_span)
    assert root.attributes["http.response.status_code"] == 200
    for step in ("auth", "admission", "queue wait", "upstream"):
        assert named[step].parent_span_id == root.span_id, step
    assert named["cold start"].parent_span_id == named["queue wait"].span_id
    upstream = named["upstream"]
    assert upstream.kind == CLIENT
    # across the process boundary: the replica's server span is the child of the router's upstream span
    replica_server = [s for s in spans if s.service == "fnserve-replica" and s.kind == SERVER]
    assert [s.parent_span_id for s in replica_server] == [upstream.span_id]
    for step in ("preprocess", "model", "postprocess"):
        chain = ancestors(named[step], by_id)
        assert named[step].service == "fnserve-replica"
        assert replica_server[0].name in chain and chain[-1] == root.name, (step, chain)


def test_logs_follow_shows_new_requests_and_ends_when_the_function_is_removed(tmp_path: Path,
                                                                            example_dir: Path) -> None:
    with running_router(tmp_path / "state", env={"FNSERVE_REPLICA_LOG_KEEP_SECONDS": "1"}) as router:
        router.cli("deploy", str(example_dir), check=True)
        follower = subprocess.Popen([*FNSERVE, "logs", "sentiment", "-f"], stdout=subprocess.PIPE, text=True,
                                    env={**router.env, "FNSERVE_URL": router.url, "FNSERVE_API_KEY": router.admin_key})
        try:
            seen: list[str] = []
            reader = threading.Thread(target=lambda: seen.extend(iter(follower.stdout.readline, "")), daemon=True)
            reader.start()
            status, headers, _ = http("POST", f"{router.url}/v1/models/sentiment:predict",
                                      {"instances": ["what a wonderful film"]})
            assert status == 200
            request_id = headers["X-Request-ID"]
            # text format: the replica's access line, with the router's request id, reaches the follower
            line = wait_for(lambda: next((x for x in list(seen) if f"request_id={request_id}" in x), None), 15,
                            f"the replica's line for {request_id} in `fnserve logs -f`")
            assert "fnserve.access: POST /v1/models/sentiment:predict 200" in line
            assert not [x for x in seen if "fnserve.access: GET" in x], "liveness probes are not logged"
            router.cli("rm", "sentiment", check=True)
            assert follower.wait(timeout=15) == 0  # the stream ends with its function
        finally:
            if follower.poll() is None:
                follower.kill()
        # the removed function's replica logs go with it, once they have stayed their while
        wait_for(lambda: not (router.state_dir / "logs" / "sentiment").exists(), 15, "its log folder to go")
