"""Users page and /api/v1/users: admins only, validation, last admin, not yourself, CSRF."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from petray.db.engine import unit_of_work
from petray.db.models import ApiToken, User
from petray.site.users import (
    MIN_PASSWORD_LENGTH,
    create_api_token,
    get_user_by_name,
    verify_password,
)
from tests.support.app import PASSWORDS, AppHarness, csrf_of, harness, login

__all__ = ["harness"]
NEW_PASSWORD = "a-brand-new-password"
SHORTEST_GOOD = "kq7-vbn-2wzp"  # exactly MIN_PASSWORD_LENGTH, five or more distinct


def _bearer(h: AppHarness, name: str) -> dict[str, str]:
    with unit_of_work(h.sessions) as session:
        user = get_user_by_name(name, session=session)
        assert user is not None
        return {"Authorization": f"Bearer {create_api_token(user, session=session)[1]}"}


def _user_id(h: AppHarness, name: str) -> int:
    with unit_of_work(h.sessions) as session:
        user = get_user_by_name(name, session=session)
        assert user is not None
        return user.id


def _lock(h: AppHarness, name: str) -> None:
    with unit_of_work(h.sessions) as session:
        user = get_user_by_name(name, session=session)
        assert user is not None
        user.failed_logins = 9
        user.locked_until = datetime.now(UTC) + timedelta(minutes=10)


def test_api_lists_and_creates_users_with_validation(harness: AppHarness) -> None:
    admin = _bearer(harness, "admin")
    client = harness.client
    listing = client.get("/api/v1/users", headers=admin).json()
    assert [u["name"] for u in listing] == ["admin", "operator", "viewer"]
    assert all("password" not in str(u.keys()) for u in listing)
    assert {u["locked"] for u in listing} == {False}
    short = "x" * (MIN_PASSWORD_LENGTH - 1)
    for body in (
        {"name": "alice", "role": "viewer", "password": short},
        {"name": "alice", "role": "root", "password": NEW_PASSWORD},
        {"name": "two words", "role": "viewer", "password": NEW_PASSWORD},
        {"name": "alice", "role": "viewer"},
        {"name": "alice", "role": "viewer", "password": NEW_PASSWORD, "extra": 1},
    ):
        assert client.post("/api/v1/users", json=body, headers=admin).status_code == 422, body
    created = client.post(
        "/api/v1/users",
        json={"name": "alice", "role": "operator", "password": SHORTEST_GOOD},
        headers=admin,
    )
    assert created.status_code == 201
    assert created.json()["role"] == "operator" and created.json()["locked"] is False
    dup = client.post(
        "/api/v1/users",
        json={"name": "alice", "role": "viewer", "password": NEW_PASSWORD},
        headers=admin,
    )
    assert dup.status_code == 409
    assert login(TestClient(client.app), "alice", SHORTEST_GOOD).status_code == 303


def test_api_role_password_unlock_delete(harness: AppHarness) -> None:
    admin = _bearer(harness, "admin")
    client = harness.client
    viewer_id = _user_id(harness, "viewer")
    changed = client.patch(f"/api/v1/users/{viewer_id}", json={"role": "operator"}, headers=admin)
    assert changed.status_code == 200 and changed.json()["role"] == "operator"
    bad_role = client.patch(f"/api/v1/users/{viewer_id}", json={"role": "root"}, headers=admin)
    assert bad_role.status_code == 422
    short = client.post(
        f"/api/v1/users/{viewer_id}/password", json={"password": "short"}, headers=admin
    )
    assert short.status_code == 422
    _lock(harness, "viewer")
    assert client.get(f"/api/v1/users/{viewer_id}", headers=admin).json()["locked"] is True
    unlocked = client.post(f"/api/v1/users/{viewer_id}/unlock", headers=admin).json()
    assert unlocked["locked"] is False and unlocked["failed_logins"] == 0
    reset = client.post(
        f"/api/v1/users/{viewer_id}/password", json={"password": NEW_PASSWORD}, headers=admin
    )
    assert reset.status_code == 200
    with unit_of_work(harness.sessions) as session:
        user = session.get(User, viewer_id)
        assert user is not None and verify_password(user.password_hash, NEW_PASSWORD)
    _bearer(harness, "viewer")  # a token that must go with its user
    assert client.delete(f"/api/v1/users/{viewer_id}", headers=admin).status_code == 204
    assert client.get(f"/api/v1/users/{viewer_id}", headers=admin).status_code == 404
    with unit_of_work(harness.sessions) as session:
        assert session.get(User, viewer_id) is None
        assert not [t for t in session.query(ApiToken).all() if t.user_pk == viewer_id]


def test_api_keeps_the_last_admin_and_refuses_self_deletion(harness: AppHarness) -> None:
    admin = _bearer(harness, "admin")
    client = harness.client
    admin_id = _user_id(harness, "admin")
    demote = client.patch(f"/api/v1/users/{admin_id}", json={"role": "viewer"}, headers=admin)
    assert demote.status_code == 409 and "last admin" in demote.json()["detail"]
    myself = client.delete(f"/api/v1/users/{admin_id}", headers=admin)
    assert myself.status_code == 409 and "your own" in myself.json()["detail"]
    # With a second admin, the first one may be demoted; then the second is the last.
    op_id = _user_id(harness, "operator")
    assert client.patch(f"/api/v1/users/{op_id}", json={"role": "admin"}, headers=admin).is_success
    assert client.patch(
        f"/api/v1/users/{admin_id}", json={"role": "operator"}, headers=admin
    ).is_success
    second = _bearer(harness, "operator")
    assert client.delete(f"/api/v1/users/{op_id}", headers=second).status_code == 409
    assert client.get("/api/v1/users", headers=admin).status_code == 403  # no longer admin


def test_users_page_is_for_admins_only(harness: AppHarness) -> None:
    harness.login("operator")
    assert harness.client.get("/users").status_code == 403
    assert 'href="/users"' not in harness.client.get("/").text
    token = csrf_of(harness.client.get("/account").text)
    refused = harness.client.post(
        "/users",
        data={"csrf_token": token, "name": "eve", "role": "admin", "password": NEW_PASSWORD},
    )
    assert refused.status_code == 403
    harness.client.cookies.clear()
    harness.login("admin")
    page = harness.client.get("/users")
    assert page.status_code == 200 and 'data-user="viewer"' in page.text
    assert 'href="/users"' in page.text


def test_users_page_create_shows_errors_next_to_fields(harness: AppHarness) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/users").text)
    bad = harness.client.post(
        "/users",
        data={"csrf_token": token, "name": "two words", "role": "viewer", "password": "short1"},
    )
    assert bad.status_code == 422
    assert 'id="e-name"' in bad.text and 'id="e-password"' in bad.text
    assert "short1" not in bad.text  # a password is never echoed back
    assert 'value="two words"' in bad.text
    no_csrf = harness.client.post(
        "/users", data={"name": "bob", "role": "viewer", "password": NEW_PASSWORD}
    )
    assert no_csrf.status_code == 403
    ok = harness.client.post(
        "/users",
        data={"csrf_token": token, "name": "bob", "role": "viewer", "password": NEW_PASSWORD},
    )
    assert ok.status_code == 200 and "User bob added." in ok.text
    assert 'data-user="bob"' in ok.text


def test_users_page_row_actions(harness: AppHarness) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/users").text)
    viewer_id = _user_id(harness, "viewer")
    admin_id = _user_id(harness, "admin")
    short = harness.client.post(
        f"/users/{viewer_id}/password", data={"csrf_token": token, "password": "short"}
    )
    assert short.status_code == 422 and f'id="e-password-{viewer_id}"' in short.text
    last = harness.client.post(
        f"/users/{admin_id}/role", data={"csrf_token": token, "role": "viewer"}
    )
    assert last.status_code == 422 and f'id="e-role-{admin_id}"' in last.text
    assert "last admin" in last.text
    role = harness.client.post(
        f"/users/{viewer_id}/role", data={"csrf_token": token, "role": "operator"}
    )
    assert "User viewer is now operator." in role.text
    _lock(harness, "viewer")
    assert "locked until" in harness.client.get("/users").text
    unlocked = harness.client.post(f"/users/{viewer_id}/unlock", data={"csrf_token": token})
    assert "User viewer unlocked." in unlocked.text and "locked until" not in unlocked.text
    reset = harness.client.post(
        f"/users/{viewer_id}/password", data={"csrf_token": token, "password": NEW_PASSWORD}
    )
    assert "Password of viewer reset" in reset.text
    other = TestClient(harness.client.app, base_url="http://127.0.0.1")
    assert login(other, "viewer", PASSWORDS["viewer"]).status_code == 401
    assert login(other, "viewer", NEW_PASSWORD).status_code == 303
    myself = harness.client.post(f"/users/{admin_id}/delete", data={"csrf_token": token})
    assert "your own account" in myself.text
    gone = harness.client.post(f"/users/{viewer_id}/delete", data={"csrf_token": token})
    assert "User viewer removed." in gone.text and 'data-user="viewer"' not in gone.text


def test_resetting_your_own_password_keeps_you_signed_in(harness: AppHarness) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/users").text)
    admin_id = _user_id(harness, "admin")
    reset = harness.client.post(
        f"/users/{admin_id}/password", data={"csrf_token": token, "password": NEW_PASSWORD}
    )
    assert reset.status_code == 200 and "Password of admin reset" in reset.text
    assert harness.client.get("/users", follow_redirects=False).status_code == 200


@pytest.mark.parametrize("path", ["/users/999/role", "/users/999/unlock", "/users/999/delete"])
def test_unknown_user_is_404(harness: AppHarness, path: str) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/users").text)
    response = harness.client.post(path, data={"csrf_token": token, "role": "viewer"})
    assert response.status_code == 404
