"""Locust load test for one fnserve function, over KServe V1 and the Open Inference Protocol (V2), or,
for a text-generation function, streamed chat over the OpenAI-compatible route.

    FNSERVE_API_KEY=… FNSERVE_FUNCTION=sentiment locust -f loadtests/locustfile.py --headless \\
        -u 16 -r 16 -t 60s --host http://127.0.0.1:8080 --shape steady --slo-p95 250

What it sends: the function's own example inputs, ``examples.jsonl`` beside its manifest (one V1 body
``{"instances": [...]}`` per line; ``FNSERVE_EXAMPLES`` points elsewhere), as V1 bodies and, converted
with the function's V2 metadata, as V2 tensors.

How it counts, so the report reads like the platform behaves:
- a 429 (a key's limit) is an expected outcome, reported as ``<name> 429`` and not as a failure;
- a response carrying ``X-Fnserve-Cold-Start`` (it waited for a replica to start) is reported as
  ``<name> cold start``, so cold starts get their own percentiles instead of skewing the warm ones;
- anything else but a 200 is a failure, with the router's ``"error"`` message.

A text-generation function (``transformers.task: text-generation`` in its manifest, or
``FNSERVE_GENERATIVE=1``) is called by ``ChatStreamUser`` instead: streamed chat completions
(``/openai/v1/chat/completions``, ``stream: true``, ``FNSERVE_MAX_TOKENS`` tokens, default 64) with the
example inputs as prompts, read event by event. Each stream gives three rows: ``chat stream`` (the whole
stream, ms), ``chat TTFT`` (time to its first content chunk, ms) and ``chat tokens/s`` — whose
"response time" columns hold tokens per second of that stream, not milliseconds (Locust has one kind of
number per row; a row of its own keeps the percentiles meaningful).

Options beyond Locust's own (each also an environment variable): ``--shape`` steady|step|spike|idle-gap
(``FNSERVE_SHAPE``; shapes.py), ``--steps``, ``--burst``, ``--idle-gap``, ``--think-time``, and the SLO
gate ``--slo-fail-ratio`` / ``--slo-p95`` (slo.py): when the run ends, a violated threshold makes Locust
exit 1, so a load test can fail a pipeline. ``--slo-report FILE`` also writes the verdict as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shapes.py and slo.py, however Locust was started
from shapes import SHAPES, ShapeParams, shape  # noqa: E402
from slo import COLD_SUFFIX, THROTTLED_SUFFIX, Slo, check  # noqa: E402

log = logging.getLogger("fnserve.loadtest")
ROOT = Path(__file__).resolve().parents[1]
FUNCTION = os.environ.get("FNSERVE_FUNCTION", "sentiment")
COLD_HEADER = "X-Fnserve-Cold-Start"


def _examples() -> list[dict[str, Any]]:
    path = Path(os.environ.get("FNSERVE_EXAMPLES") or ROOT / "functions" / FUNCTION / "examples.jsonl")
    try:
        bodies = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"fnserve loadtest: cannot read example inputs from {path} ({exc}); set "
                         f"FNSERVE_EXAMPLES to a JSON-lines file of V1 bodies") from None
    if not bodies or not all(isinstance(b, dict) and isinstance(b.get("instances"), list) for b in bodies):
        raise SystemExit(f"fnserve loadtest: {path}: every line must be a V1 body {{\"instances\": [...]}}")
    return bodies


def _generative() -> bool:
    """Whether the function generates text (its manifest says so, or FNSERVE_GENERATIVE)."""
    if os.environ.get("FNSERVE_GENERATIVE"):
        return os.environ["FNSERVE_GENERATIVE"] not in ("0", "false", "")
    manifest = ROOT / "functions" / FUNCTION / "function.yaml"
    return manifest.is_file() and "task: text-generation" in manifest.read_text()


EXAMPLES = _examples()
V1_BODIES = [json.dumps(body).encode() for body in EXAMPLES]
GENERATIVE = _generative()
PROMPTS = [text for body in EXAMPLES for text in body["instances"] if isinstance(text, str)] or ["Once upon a time"]
MAX_TOKENS = int(os.environ.get("FNSERVE_MAX_TOKENS", "64"))


def _flatten(value: Any) -> list[Any]:
    return [x for item in value for x in _flatten(item)] if isinstance(value, list) else [value]


def _shape_of(value: Any) -> list[int]:
    return [len(value), *_shape_of(value[0])] if isinstance(value, list) and value else []


def v2_bodies(metadata: dict[str, Any]) -> list[bytes]:
    """The V1 examples as V2 requests: one tensor per input, rows stacked, using the model's datatypes."""
    inputs = metadata["inputs"]
    bodies = []
    for example in EXAMPLES:
        rows = example["instances"]
        tensors = []
        for spec in inputs:
            column = rows if len(inputs) == 1 else [row[spec["name"]] for row in rows]
            tensors.append({"name": spec["name"], "datatype": spec["datatype"], "shape": _shape_of(column),
                            "data": _flatten(column)})
        bodies.append(json.dumps({"inputs": tensors}).encode())
    return bodies


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("fnserve")
    group.add_argument("--shape", choices=sorted(SHAPES), default="steady", env_var="FNSERVE_SHAPE",
                       help="load shape (loadtests/shapes.py); uses -u, -r and -t")
    group.add_argument("--steps", type=int, default=4, env_var="FNSERVE_SHAPE_STEPS", help="stages of 'step'")
    group.add_argument("--burst", type=float, default=10.0, env_var="FNSERVE_SHAPE_BURST",
                       help="seconds of load per burst of 'idle-gap'")
    group.add_argument("--idle-gap", type=float, default=60.0, env_var="FNSERVE_SHAPE_IDLE_GAP",
                       help="silence between bursts of 'idle-gap'; longer than the scale-to-zero window")
    group.add_argument("--think-time", type=float, default=0.0, env_var="FNSERVE_THINK_TIME",
                       help="seconds each user waits between requests (0: closed loop)")
    group.add_argument("--slo-fail-ratio", default="0", env_var="FNSERVE_SLO_FAIL_RATIO",
                       help="largest acceptable failure ratio (0.01 = 1%%)")
    group.add_argument("--slo-p95", default="", env_var="FNSERVE_SLO_P95",
                       help="p95 limits in ms: '250' for every name, or 'V1 predict=200,V2 infer=300'")
    group.add_argument("--slo-report", default="", env_var="FNSERVE_SLO_REPORT", help="write the verdict here")


class FnserveShape(LoadTestShape):
    """The shape chosen with --shape, driven by -u (users), -r (spawn rate) and -t (duration)."""

    use_common_options = True  # it reads -u, -r and -t itself

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options  # type: ignore[union-attr]
        params = ShapeParams(users=options.num_users or 1, spawn_rate=options.spawn_rate or 1.0,
                             duration=float(options.run_time or "inf"), steps=options.steps,
                             burst=options.burst, idle_gap=options.idle_gap)
        return shape(options.shape)(params, self.get_run_time())


class FunctionUser(FastHttpUser):
    """Calls the function as a client of the platform would, with the key from FNSERVE_API_KEY."""

    abstract = True

    def wait_time(self) -> float:
        return float(self.environment.parsed_options.think_time)

    def on_start(self) -> None:
        key = os.environ.get("FNSERVE_API_KEY")
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def call(self, path: str, body: bytes, name: str) -> None:
        with self.client.post(path, data=body, headers=self.headers, name=name, catch_response=True) as response:
            if response.status_code == 429:  # the key's limit: expected, and reported on its own row
                response.request_meta["name"] = name + THROTTLED_SUFFIX
                response.success()
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {_error(response)}")
            elif response.headers.get(COLD_HEADER) is not None:
                response.request_meta["name"] = name + COLD_SUFFIX
                response.success()
            else:
                response.success()


def _error(response: Any) -> str:
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return (response.text or "")[:200]


class V1User(FunctionUser):
    abstract = GENERATIVE

    @task
    def predict(self) -> None:
        self.call(f"/v1/models/{FUNCTION}:predict", random.choice(V1_BODIES), "V1 predict")


_V2_BODIES: list[bytes] = []


class V2User(FunctionUser):
    abstract = GENERATIVE

    def on_start(self) -> None:
        super().on_start()
        if not _V2_BODIES:  # once per Locust process: the function's own signature
            response = self.client.get(f"/v2/models/{FUNCTION}", headers=self.headers, name="V2 metadata")
            if response.status_code != 200:
                raise SystemExit(f"fnserve loadtest: GET /v2/models/{FUNCTION} answered {response.status_code}")
            _V2_BODIES.extend(v2_bodies(json.loads(response.content)))

    @task
    def infer(self) -> None:
        self.call(f"/v2/models/{FUNCTION}/infer", random.choice(_V2_BODIES), "V2 infer")


class ChatStreamUser(FunctionUser):
    """Streamed chat, as an OpenAI client sends it: one stream at a time, read to its end."""

    abstract = not GENERATIVE

    def _report(self, name: str, value: float, length: int = 0, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type="SSE", name=name, response_time=value,
                                             response_length=length, exception=exception, context={})

    @task
    def chat(self) -> None:
        body = json.dumps({"model": FUNCTION, "stream": True, "max_tokens": MAX_TOKENS,
                           "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}).encode()
        started = time.perf_counter()
        first: float | None = None
        tokens, size, buffer = 0, 0, b""
        with self.client.post("/openai/v1/chat/completions", data=body, headers=self.headers, stream=True,
                              name="chat stream", catch_response=True) as response:
            if response.status_code != 200:
                if response.status_code == 429:
                    response.request_meta["name"] = "chat stream" + THROTTLED_SUFFIX
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {_error(response)}")
                return
            try:
                for piece in response.stream:  # as the router writes them
                    size += len(piece)
                    buffer += piece
                    *events_, buffer = buffer.split(b"\n\n")
                    for event in events_:
                        if not event.startswith(b"data: {"):
                            continue
                        data = json.loads(event[6:])
                        if data.get("usage"):
                            tokens = int(data["usage"]["completion_tokens"])
                        elif data.get("error"):
                            raise RuntimeError(str(data["error"]))
                        elif first is None and any((c.get("delta") or {}).get("content") for c in data["choices"]):
                            first = time.perf_counter()
            except Exception as exc:  # a stream that broke off mid-way
                response.failure(f"stream failed: {exc}")
                return
            ended = time.perf_counter()
            # Locust times a streamed response to its head; the row is the whole stream
            response.request_meta["response_time"] = (ended - started) * 1000
            response.request_meta["response_length"] = size
            response.success()
        if first is not None:
            self._report("chat TTFT", (first - started) * 1000)
        if tokens and ended > started:
            self._report("chat tokens/s", tokens / (ended - started), tokens)


@events.quitting.add_listener
def _slo_gate(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    try:
        slo = Slo.parse(options.slo_fail_ratio, options.slo_p95)
    except ValueError as exc:
        log.error("SLO: %s", exc)
        environment.process_exit_code = 2
        return
    stats = environment.stats
    entries = {entry.name: {"requests": entry.num_requests, "failures": entry.num_failures,
                            "p95": entry.get_response_time_percentile(0.95) or 0.0}
               for entry in stats.entries.values()
               if entry.name != "V2 metadata" and not entry.name.endswith("tokens/s")}  # a rate, not a latency
    verdict = check(slo, entries, stats.total.num_requests, stats.total.num_failures)
    for line in verdict.lines:
        log.info("SLO %s", line)
    log.info("SLO verdict: %s", "PASS" if verdict.passed else "FAIL")
    if options.slo_report:
        Path(options.slo_report).write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
    if not verdict.passed:
        environment.process_exit_code = 1
