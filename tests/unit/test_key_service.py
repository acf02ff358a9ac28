"""The key service on a real state store with a fake clock: what a caller's token is verified as, what
each kind of bad token is told (naming the key id, never the secret), rotation's grace period, that a
revocation is felt at once despite the caches, and that tenants' limits are cached and re-read.

The service reads ``time.time()`` (expiry, grace) and ``time.monotonic()`` (its caches) through its
module's ``time``; the tests put a :class:`FakeTime` there, so each clock moves only when told.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fnserve.router.quota import Limits
from fnserve.router.services import keys as keys_module
from fnserve.router.services.keys import (
    CACHE_SECONDS,
    TENANT_CACHE_SECONDS,
    AuthError,
    KeyNotFound,
    KeyService,
    Principal,
    bootstrap_admin_key,
    load_pepper,
)
from fnserve.state import StateStore

T = TypeVar("T")
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeTime:
    """Stands in for the ``time`` module in keys.py: wall and monotonic clocks moved by hand."""

    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(keys_module, "time", fake)
    return fake


@pytest.fixture
def state(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "fnserve.db")


@pytest.fixture
def service(state: StateStore, tmp_path: Path, clock: FakeTime) -> KeyService:
    return KeyService(state, load_pepper(tmp_path))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def refusal(service: KeyService, token: str) -> AuthError:
    """The AuthError verifying ``token`` raises (the test fails if it verifies)."""
    with pytest.raises(AuthError) as caught:
        run(service.verify(token))
    return caught.value


def secret_of(token: str) -> str:
    return token.rsplit("_", 1)[1]


def test_a_created_key_verifies_as_its_principal(service: KeyService) -> None:
    record, token = run(service.create("ci", "acme", ["invoke:sentiment"], None, {"rps": 5}))
    assert token.startswith(f"fns_{record.id}_")
    principal = run(service.verify(token))
    assert principal == Principal(record.id, "ci", "acme", ("invoke:sentiment",), {"rps": 5})
    assert principal.may_invoke("sentiment") and not principal.may_invoke("other")
    assert not principal.is_admin
    assert secret_of(token) not in record.secret_hash  # only a digest of the secret is stored


@pytest.mark.parametrize("token", ["", "fns_", "Bearer x", "fns_0123456789ab_short",
                                   "fns_0123456789AB_" + "a" * 40, "fns_0123456789ab_" + "g" * 40])
def test_a_malformed_token_is_refused_saying_the_expected_form(service: KeyService, token: str) -> None:
    error = refusal(service, token)
    assert error.status == 401
    assert str(error) == "malformed API key: expected fns_<key-id>_<secret>"
    assert error.key_id is None


def test_an_unknown_key_is_named_by_its_id(service: KeyService) -> None:
    token = "fns_0123456789ab_" + "a" * 40
    error = refusal(service, token)
    assert error.status == 401 and error.key_id == "0123456789ab"
    assert str(error) == "unknown API key 0123456789ab"


def test_a_wrong_secret_names_the_key_and_never_the_secret(service: KeyService) -> None:
    record, _ = run(service.create("ci", "default", ["invoke:*"], None, {}))
    wrong = "b" * 40
    error = refusal(service, f"fns_{record.id}_{wrong}")
    assert error.status == 401 and error.key_id == record.id
    assert str(error) == f"invalid secret for API key {record.id}"
    assert wrong not in str(error)


def test_a_revoked_key_is_refused_at_once_though_it_was_just_verified(service: KeyService) -> None:
    record, token = run(service.create("ci", "default", ["invoke:*"], None, {}))
    run(service.verify(token))  # now in both caches; the monotonic clock does not move
    run(service.revoke(record.id))
    error = refusal(service, token)
    assert error.status == 401 and error.key_id == record.id
    assert str(error) == f"API key {record.id} was revoked at 2023-11-14T22:13:20Z"
    assert secret_of(token) not in str(error)


def test_revoking_an_unknown_or_already_revoked_key_is_not_found(service: KeyService) -> None:
    record, _ = run(service.create("ci", "default", ["invoke:*"], None, {}))
    run(service.revoke(record.id))
    for key_id in (record.id, "0123456789ab"):
        with pytest.raises(KeyNotFound) as caught:
            run(service.revoke(key_id))
        assert caught.value.status == 404 and key_id in str(caught.value)


def test_an_expired_key_is_refused_even_from_the_cache(service: KeyService, clock: FakeTime) -> None:
    record, token = run(service.create("ci", "default", ["invoke:*"], 60.0, {}))
    assert record.expires_at == NOW + 60
    run(service.verify(token))
    clock.wall += 59.9
    run(service.verify(token))  # still valid, and cached
    clock.wall += 0.1  # the caches are fresh (monotonic time stood still), the key is not
    error = refusal(service, token)
    assert error.status == 401 and error.key_id == record.id
    assert str(error) == f"API key {record.id} expired at 2023-11-14T22:14:20Z"


def test_another_routers_revocation_is_seen_once_the_cache_expires(service: KeyService, state: StateStore,
                                                                    clock: FakeTime) -> None:
    record, token = run(service.create("ci", "default", ["invoke:*"], None, {}))
    run(service.verify(token))
    assert state.revoke_key(record.id, clock.wall)  # straight into the store, as another router would
    run(service.verify(token))  # this router still trusts its cache for a few seconds
    clock.mono += CACHE_SECONDS + 0.01
    assert "was revoked" in str(refusal(service, token))


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(service: KeyService, clock: FakeTime) -> None:
    record, old = run(service.create("ci", "default", ["invoke:*"], None, {}))
    run(service.verify(old))
    new = run(service.rotate(record.id, 30.0))
    assert new != old and new.startswith(f"fns_{record.id}_")
    assert run(service.verify(new)).key_id == record.id
    assert run(service.verify(old)).key_id == record.id  # during the grace period
    clock.wall += 29.9
    assert run(service.verify(old)).key_id == record.id
    clock.wall += 0.1  # the grace is over; the caches are still fresh and must not keep it alive
    error = refusal(service, old)
    assert error.status == 401 and str(error) == f"invalid secret for API key {record.id}"
    assert run(service.verify(new)).key_id == record.id


def test_a_second_rotation_ends_the_first_secret_at_once(service: KeyService) -> None:
    record, first = run(service.create("ci", "default", ["invoke:*"], None, {}))
    second = run(service.rotate(record.id, 3600.0))
    third = run(service.rotate(record.id, 3600.0))
    assert run(service.verify(second)).key_id == record.id and run(service.verify(third)).key_id == record.id
    assert "invalid secret" in str(refusal(service, first))  # only one previous secret is kept


def test_a_revoked_key_cannot_be_rotated(service: KeyService) -> None:
    record, _ = run(service.create("ci", "default", ["invoke:*"], None, {}))
    run(service.revoke(record.id))
    with pytest.raises(KeyNotFound):
        run(service.rotate(record.id, 60.0))


def test_tenant_limits_are_cached_and_reread_after_set_tenant(service: KeyService, state: StateStore,
                                                               clock: FakeTime) -> None:
    assert run(service.tenant_limits()) == {}
    generation = service.tenant_generation
    state.set_tenant_limits("acme", {"rps": 5.0})  # another router's change: not seen while cached
    assert run(service.tenant_limits()) == {}
    assert service.tenant_generation == generation  # nothing re-read, nothing to resolve again
    run(service.set_tenant("acme", {"rps": 7.0, "daily": 100}))  # this router's: seen at once
    assert run(service.tenant_limits()) == {"acme": Limits(rps=7.0, daily=100)}
    assert service.tenant_generation == generation + 1
    assert run(service.tenants()) == {"acme": {"rps": 7.0, "daily": 100}}
    state.set_tenant_limits("beta", {"concurrency": 2})
    clock.mono += TENANT_CACHE_SECONDS + 0.01
    assert run(service.tenant_limits())["beta"] == Limits(concurrency=2)
    assert service.tenant_generation == generation + 2


def test_the_pepper_is_private_and_stable(tmp_path: Path) -> None:
    first = load_pepper(tmp_path)
    assert len(first) == 32 and load_pepper(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "pepper").stat().st_mode) == 0o600


def test_a_token_verifies_only_under_the_pepper_it_was_made_with(state: StateStore, tmp_path: Path,
                                                                 clock: FakeTime) -> None:
    service = KeyService(state, load_pepper(tmp_path))
    record, token = run(service.create("ci", "default", ["invoke:*"], None, {}))
    other = KeyService(state, b"another installation's pepper")
    assert "invalid secret" in str(refusal(other, token))


def test_the_first_start_writes_one_admin_key_that_verifies(state: StateStore, tmp_path: Path,
                                                            clock: FakeTime) -> None:
    pepper = load_pepper(tmp_path)
    token = bootstrap_admin_key(state, pepper, tmp_path)
    assert token is not None
    assert (tmp_path / "admin.key").read_text() == token + "\n"
    assert stat.S_IMODE((tmp_path / "admin.key").stat().st_mode) == 0o600
    assert bootstrap_admin_key(state, pepper, tmp_path) is None  # keys exist: none is made again
    principal = run(KeyService(state, pepper).verify(token))
    assert principal.is_admin and principal.may_invoke("anything")
