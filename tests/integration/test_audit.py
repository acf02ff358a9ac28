"""The audit log through a real router: every admin action the test performs is on record, with the
key that did it, and no secret anywhere in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import http, running_router
from tests.integration.test_jobs import scale_function
from tests.integration.test_limits import private_function

pytestmark = pytest.mark.slow


def test_every_admin_action_is_on_record_with_its_actor_and_no_secret(tmp_path: Path, warm_dir: Path) -> None:
    with running_router(tmp_path / "state") as router:
        admin_id = router.admin_key.split("_")[1]
        created = json.loads(router.cli("keys", "create", "--name", "ops", "--scope", "admin", "--json",
                                        check=True).stdout)
        ops_id, ops_token = created["key"]["id"], created["token"]
        ops = {"FNSERVE_API_KEY": ops_token}

        def as_ops(*args: str) -> str:
            import os
            import subprocess
            import sys

            done = subprocess.run([sys.executable, "-m", "fnserve.cli", *args], capture_output=True, text=True,
                                  timeout=180, env={**os.environ, **router.env, "FNSERVE_URL": router.url, **ops})
            assert done.returncode == 0, done.stderr
            return done.stdout

        user = json.loads(as_ops("keys", "create", "--name", "user", "--json"))
        user_id = user["key"]["id"]
        rotated = json.loads(as_ops("keys", "rotate", user_id, "--json"))["token"]
        as_ops("keys", "revoke", user_id)
        as_ops("tenants", "set", "acme", "--rps", "5")
        folder = private_function(warm_dir, tmp_path / "fn")
        as_ops("deploy", str(folder))
        as_ops("deploy", str(folder))
        as_ops("rollback", "private")
        as_ops("rm", "private")
        job_id = as_ops("train", str(scale_function(tmp_path)), "--set", "sleep=60").strip()
        as_ops("jobs", "cancel", job_id)
        missing = router.cli("keys", "revoke", "0123456789ab")
        assert missing.returncode == 3  # not found

        entries = router.api.audit()["entries"]
        assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
            (admin_id, "key.create", "ops"), (ops_id, "key.create", "user"), (ops_id, "key.rotate", user_id),
            (ops_id, "key.revoke", user_id), (ops_id, "tenant.set", "acme"), (ops_id, "function.deploy", "private"),
            (ops_id, "function.deploy", "private"), (ops_id, "function.rollback", "private"),
            (ops_id, "function.delete", "private"), (ops_id, "job.submit", str(tmp_path / "scale" / "train.yaml")),
            (ops_id, "job.cancel", job_id), (admin_id, "key.revoke", "0123456789ab")]
        assert [e["outcome"] for e in entries][:-1] == ["ok"] * 11
        assert entries[-1]["status"] == 404 and "no active API key" in entries[-1]["outcome"]
        assert entries[1]["detail"]["keyId"] == user_id and entries[5]["detail"]["revision"] == 1
        assert entries[9]["detail"]["jobId"] == job_id
        assert all(e["client"] == "127.0.0.1" and len(e["requestId"]) == 32 for e in entries)
        everything = json.dumps(entries)
        pepper = (router.state_dir / "pepper").read_bytes().hex()
        for secret in (router.admin_key, ops_token, user["token"], rotated, pepper,
                       ops_token.split("_")[2], rotated.split("_")[2]):
            assert secret not in everything

        mine = json.loads(router.cli("audit", "--actor", ops_id, "--action", "key.", "--since", "1h", "--json",
                                     check=True).stdout)["entries"]
        assert [e["action"] for e in mine] == ["key.create", "key.rotate", "key.revoke"]
        table = router.cli("audit", "--limit", "2", check=True).stdout
        assert "job.cancel" in table and "key.revoke" in table and "404: no active API key" in table
        assert "tenant.set" not in table

        status, _, body = http("GET", f"{router.url}/api/audit?since=yesterday", headers=router.admin)
        assert status == 400 and "since" in body["error"]
        listed = json.loads(router.cli("keys", "create", "--name", "reader", "--json", check=True).stdout)
        status, _, body = http("GET", f"{router.url}/api/audit",
                               headers={"Authorization": f"Bearer {listed['token']}"})
        assert status == 403 and "admin" in body["error"]
