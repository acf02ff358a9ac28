"""The prepared replica server (runtimes/server.py): what a fork server builds once before any model exists
and warms with requests to a stand-in model must not show that stand-in to anyone afterwards.

Run in a fresh interpreter: the server is built on KServe's module-level app, once per process."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
sys.argv = sys.argv[:1]
import prometheus_client
from runtimes.server import STAND_IN, prepare
server = prepare("onnx")
print(json.dumps({"models": list(server.server.registered_models.get_models()),
                  "in_metrics": STAND_IN in prometheus_client.generate_latest().decode(),
                  "stand_in": STAND_IN}))
"""


def test_the_warm_up_leaves_no_stand_in_model_in_the_registry_or_the_metrics() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["models"] == [] and found["in_metrics"] is False
    assert "warm-up request" not in done.stderr  # every warm-up request was answered 200 (KServe as expected)
