"""API keys through a real router: each kind of bad key, scopes, revocation, expiry, rotation, secrecy."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Router, function_copy, http, running_router, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def router(tmp_path: Path, example_dir: Path) -> Iterator[Router]:
    private = function_copy(example_dir, tmp_path / "private", name="private", auth={"public": False})
    with running_router(tmp_path / "state") as instance:
        instance.cli("deploy", str(private), check=True)
        instance.cli("deploy", str(example_dir), check=True)  # public: true
        yield instance


def invoke(router: Router, name: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    return http("POST", f"{router.url}/v1/models/{name}:predict", {"instances": ["a fine film"]}, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_key(router: Router, *args: str) -> tuple[str, str]:
    out = router.cli("keys", "create", "--json", *args, check=True).stdout
    created = json.loads(out)
    return created["key"]["id"], created["token"]


def test_the_admin_key_is_created_once_private_and_lasts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_router(state) as first:
        key_file = state / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert first.log().count("created the admin API key") == 1 and first.admin_key in first.log()
        assert re.fullmatch(r"fns_[0-9a-f]{12}_[0-9a-f]{40}", first.admin_key)
    with running_router(state) as second:
        assert "created the admin API key" not in second.log()
        assert second.admin_key == first.admin_key
        assert http("GET", f"{second.url}/api/functions", headers=second.admin)[0] == 200


def test_each_kind_of_bad_key_gets_its_answer(router: Router) -> None:
    status, headers, body = invoke(router, "private")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="fnserve"'
    assert body["error"].startswith("an API key is required") and body["requestId"]

    status, headers, body = invoke(router, "private", bearer("not-a-key"))
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="fnserve", error="invalid_token"'
    assert body["error"] == "malformed API key: expected fns_<key-id>_<secret>"

    status, _, body = invoke(router, "private", bearer("fns_000000000000_" + "0" * 40))
    assert status == 401 and body["error"] == "unknown API key 000000000000" and body["keyId"] == "000000000000"

    key_id, token = new_key(router, "--name", "svc", "--scope", "invoke:sentiment")
    status, _, body = invoke(router, "private", bearer(token[:-1] + ("0" if token[-1] != "0" else "1")))
    assert status == 401 and body["error"] == f"invalid secret for API key {key_id}"

    status, _, body = invoke(router, "private", bearer(token))
    assert status == 403 and body["error"] == f"API key {key_id} may not invoke 'private' (scopes: invoke:sentiment)"
    status, _, body = http("GET", f"{router.url}/api/functions", headers=bearer(token))
    assert status == 403 and body["error"] == f"API key {key_id} has no 'admin' scope"
    assert invoke(router, "sentiment", bearer(token))[0] == 200

    router.cli("keys", "revoke", key_id, check=True)
    status, _, body = invoke(router, "sentiment", {"X-API-Key": token})
    assert status == 200  # public: no key needed, a revoked one is not even looked at
    status, _, body = http("GET", f"{router.url}/api/keys", headers={"X-API-Key": token})
    assert status == 401 and body["error"].startswith(f"API key {key_id} was revoked at ")


def test_scoped_key_expiry_and_x_api_key(router: Router) -> None:
    key_id, token = new_key(router, "--name", "short", "--scope", "invoke:private", "--expires", "2s")
    assert invoke(router, "private", {"X-API-Key": token})[0] == 200
    wait_for(lambda: invoke(router, "private", bearer(token))[0] == 401, 10, "the key to expire")
    body = invoke(router, "private", bearer(token))[2]
    assert body["error"].startswith(f"API key {key_id} expired at ")
    listing = router.cli("keys", "ls", check=True).stdout
    assert re.search(rf"{key_id}\s+short\s+default\s+invoke:private\s+expired", listing)


def test_rotation_keeps_the_old_secret_for_the_grace_period(router: Router) -> None:
    key_id, old = new_key(router, "--name", "rotating", "--scope", "invoke:private")
    rotated = json.loads(router.cli("keys", "rotate", key_id, "--grace", "2s", "--json", check=True).stdout)
    new = rotated["token"]
    assert new != old and new.startswith(f"fns_{key_id}_")
    assert invoke(router, "private", bearer(new))[0] == 200
    assert invoke(router, "private", bearer(old))[0] == 200  # still inside the grace period
    wait_for(lambda: invoke(router, "private", bearer(old))[0] == 401, 10, "the old secret to lapse")
    assert invoke(router, "private", bearer(new))[0] == 200


def test_open_routes_the_metrics_scope_and_bad_key_requests(router: Router) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/openapi.json"):
        assert http("GET", f"{router.url}{path}")[0] == 200
    assert http("GET", f"{router.url}/metrics")[0] == 401
    # a key for Prometheus: the metrics and nothing else
    key_id, token = new_key(router, "--name", "prometheus", "--scope", "metrics")
    status, headers, text = http("GET", f"{router.url}/metrics", headers=bearer(token))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "fnserve_build_info{" in text.decode() and "process_cpu_seconds_total " in text.decode()
    status, _, body = http("GET", f"{router.url}/api/functions", headers=bearer(token))
    assert status == 403 and body["error"] == f"API key {key_id} has no 'admin' scope"
    assert invoke(router, "private", bearer(token))[0] == 403
    listing = router.cli("keys", "ls", check=True).stdout
    assert re.search(rf"{key_id}\s+prometheus\s+default\s+metrics\s", listing)
    status, _, body = http("POST", f"{router.url}/api/keys", {"name": "x", "scopes": ["root"]}, headers=router.admin)
    assert status == 400 and "scopes: must be admin, metrics, invoke:* or invoke:<function>" in body["error"]
    status, _, body = http("POST", f"{router.url}/api/keys", {"name": "x", "expiresIn": "soon"}, headers=router.admin)
    assert status == 400 and "expiresIn: must be a duration" in body["error"]
    result = router.cli("keys", "revoke", "ffffffffffff")
    assert result.returncode == 3 and result.stderr.strip() == "fnserve: no active API key 'ffffffffffff'"


def test_no_secret_in_any_log_line_or_error_body(router: Router) -> None:
    tokens = [new_key(router, "--name", f"k{i}", "--scope", "invoke:sentiment")[1] for i in range(3)]
    bodies = []
    for token in tokens:
        bodies.append(json.dumps(invoke(router, "private", bearer(token))[2]))           # 403
        bodies.append(json.dumps(invoke(router, "private", bearer(token + "0"))[2]))     # malformed
        bodies.append(json.dumps(invoke(router, "private", bearer(token[:-1] + "x"))[2]))  # malformed
        broken = token[:-1] + ("0" if token[-1] != "0" else "1")
        bodies.append(json.dumps(invoke(router, "private", bearer(broken))[2]))          # wrong secret
    logs = router.log() + router.cli("logs", "private", check=True).stdout
    logs += "".join(p.read_text(errors="replace") for p in (router.state_dir / "logs").rglob("*.log"))
    for token in tokens:
        secret = token.rsplit("_", 1)[1]
        assert secret not in logs
        assert not any(secret in body or secret[:-1] in body for body in bodies)
    db = b"".join(p.read_bytes() for p in router.state_dir.glob("fnserve.db*"))  # the database and its WAL
    assert b"api_keys" in db
    assert not any(t.rsplit("_", 1)[1].encode() in db for t in tokens)  # only HMACs are stored
