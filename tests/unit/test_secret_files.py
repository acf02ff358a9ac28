"""The pepper and the admin key as mounted Secrets (FNSERVE_PEPPER_FILE, FNSERVE_ADMIN_KEY_FILE) on a real
state store: which pepper wins, what a bad file is told (naming the file, never its contents), and the
admin key made valid at every start — created, its secret replaced after a rotation, and an insert that
another router won at the same moment read back instead of failing."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from fnserve.records import KeyRecord
from fnserve.router.services.keys import (
    AuthError,
    KeyService,
    SecretFileError,
    install_admin_key,
    load_pepper,
    read_admin_key_file,
    resolve_pepper,
)
from fnserve.settings import Settings
from fnserve.state import StateStore

PEPPER = b"a pepper shared by every router"


def token() -> tuple[str, str, str]:
    key_id, secret = secrets.token_hex(6), secrets.token_hex(20)
    return key_id, secret, f"fns_{key_id}_{secret}"


def verifies(state: StateStore, pepper: bytes, bearer: str) -> bool:
    try:
        principal = asyncio.run(KeyService(state, pepper).verify(bearer))
    except AuthError:
        return False
    return principal.is_admin and principal.may_invoke("anything")


def test_the_pepper_file_wins_and_is_never_created(tmp_path: Path) -> None:
    pepper_file = tmp_path / "pepper-secret"
    pepper_file.write_bytes(PEPPER)
    settings = Settings(state_dir=tmp_path / "state", pepper_file=str(pepper_file))
    assert resolve_pepper(settings) == PEPPER and not (tmp_path / "state" / "pepper").exists()
    assert resolve_pepper(Settings(state_dir=tmp_path)) == load_pepper(tmp_path)  # unset: the state dir's

    missing = Settings(state_dir=tmp_path, pepper_file=str(tmp_path / "nowhere"))
    with pytest.raises(SecretFileError, match=f"^FNSERVE_PEPPER_FILE={tmp_path}/nowhere: no such file$"):
        resolve_pepper(missing)
    assert not (tmp_path / "nowhere").exists()
    pepper_file.write_bytes(b"short")
    with pytest.raises(SecretFileError, match="holds 5 bytes, a pepper needs at least 16"):
        resolve_pepper(settings)


def test_a_malformed_admin_key_file_is_named_but_not_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "token"
    key_file.write_text("fns_short_s3cr3t-value\n")
    with pytest.raises(SecretFileError) as refused:
        read_admin_key_file(Settings(admin_key_file=str(key_file)))
    assert str(refused.value) == (f"FNSERVE_ADMIN_KEY_FILE={key_file}: not an API key: expected "
                                  "fns_<12 hex digits>_<40 hex digits>")
    key_id, secret, bearer = token()
    key_file.write_text(bearer + "\n")  # a trailing newline, as `echo … > file` leaves it
    assert read_admin_key_file(Settings(admin_key_file=str(key_file))) == (key_id, secret)
    assert read_admin_key_file(Settings()) is None


def test_the_admin_key_is_created_then_follows_its_secret(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "fnserve.db")
    key_id, secret, bearer = token()
    install_admin_key(state, PEPPER, key_id, secret)
    install_admin_key(state, PEPPER, key_id, secret)  # every start: nothing changes
    (record,) = state.keys()
    assert record.id == key_id and record.scopes == ("admin", "invoke:*") and verifies(state, PEPPER, bearer)

    rotated = secrets.token_hex(20)
    install_admin_key(state, PEPPER, key_id, rotated)
    assert verifies(state, PEPPER, f"fns_{key_id}_{rotated}") and not verifies(state, PEPPER, bearer)
    assert len(state.keys()) == 1


class LateReader(StateStore):
    """A router whose first look for the key comes just before another router inserts it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.looked = False

    def key(self, key_id: str) -> KeyRecord | None:
        if not self.looked:
            self.looked = True
            return None
        return super().key(key_id)


def test_an_insert_another_router_won_is_read_back(tmp_path: Path) -> None:
    key_id, secret, bearer = token()
    install_admin_key(StateStore(tmp_path / "fnserve.db"), PEPPER, key_id, secret)  # the other router, first
    late = LateReader(tmp_path / "fnserve.db")
    install_admin_key(late, PEPPER, key_id, secret)  # its insert conflicts: no error
    assert late.looked and verifies(late, PEPPER, bearer)

    rotated = secrets.token_hex(20)
    later = LateReader(tmp_path / "fnserve.db")
    install_admin_key(later, PEPPER, key_id, rotated)  # conflict, and the secret it brings still wins
    assert verifies(later, PEPPER, f"fns_{key_id}_{rotated}") and not verifies(later, PEPPER, bearer)
