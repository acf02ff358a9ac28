"""Property-based fuzzing of the router against its own OpenAPI document, with schemathesis.

schemathesis reads /openapi.json from a real router (with the example deployed and private) and sends
schema-derived requests, valid and invalid, to every operation: bodies of the admin models, V1 and V2
inference bodies, path and query parameters. The run fails on any 5xx, on a status the document does
not list, and on an answer whose body or content type breaks the document. Bounded in examples and
time (FNSERVE_FUZZ_SECONDS, 60 by default) so it stays near a minute here; FNSERVE_FUZZ_EXAMPLES,
FNSERVE_FUZZ_SECONDS and FNSERVE_FUZZ_SEED widen or vary it for a longer run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, function_copy, http, running_router

pytestmark = pytest.mark.slow

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance")


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(tmp_path: Path, warm_dir: Path) -> None:
    private = function_copy(warm_dir, tmp_path / "sentiment", auth={"public": False})
    with running_router(tmp_path / "state") as router:
        router.cli("deploy", str(private), check=True)
        seed = os.environ.get("FNSERVE_FUZZ_SEED", "20261204")
        command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{router.url}/openapi.json",
                   "--header", f"Authorization: Bearer {router.admin_key}", "--checks", CHECKS,
                   "--phases", "examples,coverage,fuzzing", "--max-examples",
                   os.environ.get("FNSERVE_FUZZ_EXAMPLES", "10"), "--seed", seed,
                   "--max-time", os.environ.get("FNSERVE_FUZZ_SECONDS", "60"),
                   # schemathesis reuses names and ids it saw in answers: it would remove the function
                   # and revoke its own key, and fuzz nothing after that (the corpus covers both routes)
                   "--exclude-operation-id", "delete_function", "--exclude-operation-id", "revoke_key",
                   # and it would train the function for real, once per example drawn (a job of seconds of
                   # CPU each; its only input is the path's name: tests/unit/test_console_api.py)
                   "--exclude-operation-id", "train_function",
                   "--request-timeout", "30", "--no-color", "--suppress-health-check", "all"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                                env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
                                     "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"seed {seed}:\n{output[-6000:]}"
        # the run reached the function, and left it serving. Asked with a key of a tenant of its own: the run
        # may well have set limits on the tenant "default" the admin key belongs to (PUT /api/tenants/default
        # with an rps of 1e-114 is a valid request, and the router then rightly answers 429)
        token = router.api.create_key("after-fuzz", tenant=f"after-fuzz-{seed}", scopes=["invoke:*"])["token"]
        status, _, body = http("POST", f"{router.url}/v1/models/sentiment:predict", {"instances": ["lovely"]},
                               headers={"Authorization": f"Bearer {token}"})
        assert status == 200, body
        assert "Traceback" not in router.log()
    replica_logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").rglob("*.log"))
    assert "Traceback" not in replica_logs
