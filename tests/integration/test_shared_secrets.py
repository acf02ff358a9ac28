"""Routers that share their secrets as a cluster mounts them: one pepper file and one admin key file for
real `fnserve up` processes. The admin token works on every router, its secret is never printed, a rotated
file takes effect on restart, routers starting together on one state all come up, and a bad file ends
the start in one line."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fnserve.state import StateStore
from tests.conftest import Router, http, refused_start, running_router

pytestmark = pytest.mark.slow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def mounted(tmp_path: Path) -> tuple[dict[str, str], str]:
    """The two files as Secrets are mounted (mode 0400), the environment naming them, and the admin token."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    token = f"fns_{secrets.token_hex(6)}_{secrets.token_hex(20)}"
    for name, data in (("pepper", secrets.token_bytes(32)), ("token", token.encode())):
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o400)
    return {"FNSERVE_PEPPER_FILE": str(folder / "pepper"), "FNSERVE_ADMIN_KEY_FILE": str(folder / "token")}, token


def test_two_routers_take_the_admin_key_and_the_pepper_from_the_files(tmp_path: Path,
                                                                       mounted: tuple[dict[str, str], str]) -> None:
    env, token = mounted
    key_id = token.split("_")[1]
    with running_router(tmp_path / "a" / "state", env=env, admin_key=token) as a, \
            running_router(tmp_path / "b" / "state", env=env, admin_key=token) as b:
        for router in (a, b):
            status, _, body = http("GET", f"{router.url}/api/keys", headers=bearer(token))
            assert status == 200 and [(k["id"], k["scopes"]) for k in body["keys"]] == [(key_id, ["admin", "invoke:*"])]
            assert key_id in router.cli("keys", "ls", check=True).stdout
            assert f"admin API key {key_id} from FNSERVE_ADMIN_KEY_FILE" in router.log()
            assert "created the admin API key" not in router.log()
            assert token.split("_")[2] not in router.log()  # the secret is never printed
            assert not (router.state_dir / "admin.key").exists() and not (router.state_dir / "pepper").exists()
    # one pepper: the two separate stores hold the same hash of the same secret
    first, second = (StateStore(r.state_dir / "fnserve.db").key(key_id) for r in (a, b))
    assert first is not None and second is not None and first.secret_hash == second.secret_hash


def test_a_rotated_admin_key_file_replaces_the_old_secret_on_restart(tmp_path: Path,
                                                                     mounted: tuple[dict[str, str], str]) -> None:
    env, old = mounted
    with running_router(tmp_path / "state", env=env, admin_key=old) as router:
        assert http("GET", f"{router.url}/api/keys", headers=bearer(old))[0] == 200
    new = f"{old[:17]}{secrets.token_hex(20)}"  # the same key id, a new secret
    key_file = Path(env["FNSERVE_ADMIN_KEY_FILE"])
    key_file.chmod(0o600)
    key_file.write_text(new + "\n")
    with running_router(tmp_path / "state", env=env, admin_key=new) as router:
        assert http("GET", f"{router.url}/api/keys", headers=bearer(new))[0] == 200
        status, _, body = http("GET", f"{router.url}/api/keys", headers=bearer(old))
        assert status == 401 and body["error"] == f"invalid secret for API key {old[4:16]}"


def test_routers_starting_together_on_one_state_all_come_up(tmp_path: Path,
                                                             mounted: tuple[dict[str, str], str]) -> None:
    """As replicas of a Deployment on one database do: each may find the key absent and insert it."""
    env, token = mounted
    routers = [Router(tmp_path / "state", env=env, admin_key=token) for _ in range(3)]
    try:
        with ThreadPoolExecutor(len(routers)) as pool:
            list(pool.map(Router.start, routers))
        for router in routers:
            assert http("GET", f"{router.url}/api/keys", headers=bearer(token))[0] == 200
        assert len(StateStore(tmp_path / "state" / "fnserve.db").keys()) == 1
    finally:
        for router in routers:
            if router.process is not None:
                router.stop()


@pytest.mark.parametrize(("file", "content", "expected"), [
    ("FNSERVE_ADMIN_KEY_FILE", b"fns_not-a-key_s3cr3t\n", "not an API key: expected fns_<12 hex digits>_<40 hex digits>"),
    ("FNSERVE_ADMIN_KEY_FILE", None, "no such file"),
    ("FNSERVE_PEPPER_FILE", b"too short", "holds 9 bytes, a pepper needs at least 16"),
], ids=["malformed-admin-key", "missing-admin-key", "short-pepper"])
def test_a_bad_secret_file_ends_the_start_in_one_line(tmp_path: Path, mounted: tuple[dict[str, str], str],
                                                      file: str, content: bytes | None, expected: str) -> None:
    env, _ = mounted
    path = tmp_path / "bad"
    if content is not None:
        path.write_bytes(content)
    line = refused_start(tmp_path / "state", env={**env, file: str(path)})
    assert line.startswith(f"fnserve: {file}={path}: {expected}") and "s3cr3t" not in line, line
