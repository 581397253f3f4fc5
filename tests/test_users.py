"""Users: argon2id hashes, lockout with growing delay, API tokens, roles, ``petray user``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from petray.cli import main
from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.errors import ConfigurationError
from petray.site.users import (
    FREE_FAILURES,
    MIN_PASSWORD_LENGTH,
    LoginOutcome,
    Role,
    authenticate,
    change_role,
    create_api_token,
    create_user,
    delete_user,
    has_role,
    hash_password,
    is_locked,
    list_users,
    lockout_delay,
    revoke_api_token,
    unlock,
    user_for_token,
    verify_password,
)
from tests.conftest import PRODUCTION_HASHER
from tests.support.databases import migrated_sqlite


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(migrated_sqlite(tmp_path / "u.db"))
    with unit_of_work(make_sessionmaker(engine)) as s:
        yield s
    engine.dispose()


def test_password_hash_is_argon2id_and_verifies() -> None:
    hashed = hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "correct horse battery")
    assert not verify_password(hashed, "wrong")
    assert not verify_password("not-a-hash", "x")


def test_the_gateway_hashes_with_rfc_9106_parameters() -> None:
    # The tests swap in a cheap hasher (tests/conftest.py); this is the one petray runs with.
    hashed = PRODUCTION_HASHER.hash("correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PRODUCTION_HASHER.verify(hashed, "correct horse battery")


def test_create_user_rules(session: Session) -> None:
    create_user(session=session, name="alice", password="long-enough-1", role="admin")
    with pytest.raises(ConfigurationError):
        create_user(session=session, name="alice", password="long-enough-2", role="viewer")
    with pytest.raises(ConfigurationError):
        create_user(session=session, name="bob", password="short", role="viewer")
    with pytest.raises(ConfigurationError):
        create_user(session=session, name="bob", password="long-enough-1", role="root")
    with pytest.raises(ConfigurationError):
        create_user(session=session, name="two words", password="long-enough-1", role="viewer")


def test_lockout_grows_and_blocks_even_the_right_password(session: Session) -> None:
    create_user(session=session, name="op", password="operator-pass-1", role="operator")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(FREE_FAILURES):
        assert authenticate("op", "bad", session=session, now=now).outcome == LoginOutcome.INVALID
    assert authenticate("op", "operator-pass-1", session=session, now=now).outcome == "ok"
    for _ in range(FREE_FAILURES + 1):
        authenticate("op", "bad", session=session, now=now)
    locked = authenticate("op", "operator-pass-1", session=session, now=now)
    assert locked.outcome == LoginOutcome.LOCKED and locked.retry_after_s > 0
    later = now + timedelta(seconds=locked.retry_after_s + 1)
    assert authenticate("op", "operator-pass-1", session=session, now=later).outcome == "ok"
    assert lockout_delay(FREE_FAILURES + 2) > lockout_delay(FREE_FAILURES + 1) > timedelta(0)
    assert lockout_delay(1000) == timedelta(minutes=15)


def test_api_tokens_are_stored_hashed(session: Session) -> None:
    user = create_user(session=session, name="s", password="script-pass-1", role="viewer")
    row, clear = create_api_token(user, session=session, label="cron")
    assert clear not in row.token_hash and len(row.token_hash) == 64
    found = user_for_token(clear, session=session)
    assert found is not None and found.id == user.id
    assert user_for_token(clear + "x", session=session) is None
    revoke_api_token(row.id, session=session, user=user)
    assert user_for_token(clear, session=session) is None


def test_roles_are_ordered() -> None:
    assert has_role("admin", Role.OPERATOR)
    assert has_role("operator", Role.VIEWER)
    assert not has_role("viewer", Role.OPERATOR)
    assert not has_role("nonsense", Role.VIEWER)


def test_petray_user_add_needs_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETRAY_HOME", str(tmp_path))
    monkeypatch.delenv("PETRAY_DATABASE_URL", raising=False)
    monkeypatch.delenv("PETRAY_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["user", "add", "root", "--admin"]) == 2  # no default password anywhere
    monkeypatch.setenv("PETRAY_PASSWORD", "first-admin-pass")
    assert main(["user", "add", "root", "--admin"]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'petray.db'}")
    with unit_of_work(make_sessionmaker(engine)) as s:
        users = list_users(session=s)
        assert [(u.name, u.role) for u in users] == [("root", "admin")]
        assert authenticate("root", "first-admin-pass", session=s).outcome == "ok"
    engine.dispose()


def test_change_role_keeps_the_last_admin(session: Session) -> None:
    first = create_user(session=session, name="first", password="long-enough-1", role="admin")
    other = create_user(session=session, name="other", password="long-enough-1", role="viewer")
    with pytest.raises(ConfigurationError, match="last admin"):
        change_role(first, Role.OPERATOR, session=session)
    with pytest.raises(ConfigurationError, match="unknown role"):
        change_role(other, "root", session=session)
    change_role(other, "admin", session=session)
    change_role(first, Role.VIEWER, session=session)
    assert (first.role, other.role) == ("viewer", "admin")


def test_delete_user_rules_and_tokens(session: Session) -> None:
    admin = create_user(session=session, name="admin", password="long-enough-1", role="admin")
    viewer = create_user(session=session, name="viewer", password="long-enough-1", role="viewer")
    token = create_api_token(viewer, session=session)[1]
    with pytest.raises(ConfigurationError, match="your own"):
        delete_user(viewer, session=session, acting_user_id=viewer.id)
    with pytest.raises(ConfigurationError, match="last admin"):
        delete_user(admin, session=session, acting_user_id=None)
    delete_user(viewer, session=session, acting_user_id=admin.id)
    session.flush()
    assert [u.name for u in list_users(session=session)] == ["admin"]
    assert user_for_token(token, session=session) is None


def test_password_policy_is_twelve_characters_and_unlock_clears_the_lockout(
    session: Session,
) -> None:
    assert MIN_PASSWORD_LENGTH == 12
    with pytest.raises(ConfigurationError, match="at least 12"):
        create_user(session=session, name="bob", password="x" * 11, role="viewer")
    bob = create_user(session=session, name="bob", password="kq7-vbn-2wzp", role="viewer")
    now = datetime.now(UTC)
    for _ in range(FREE_FAILURES + 1):
        authenticate("bob", "wrong", session=session, now=now)
    assert is_locked(bob, now=now)
    unlock(bob)
    assert not is_locked(bob, now=now) and bob.failed_logins == 0
    assert authenticate("bob", "kq7-vbn-2wzp", session=session, now=now).outcome == LoginOutcome.OK
