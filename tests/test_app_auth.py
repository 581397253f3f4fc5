"""Login, lockout, sessions, CSRF, logout, API tokens and the production secret rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.errors import ConfigurationError
from petray.site.users import FREE_FAILURES, get_user_by_name
from serve.app import create_app
from tests.support.app import (
    PASSWORDS,
    AppHarness,
    FakePipeline,
    csrf_of,
    harness,
    login,
    make_settings,
)

__all__ = ["harness"]


def test_pages_redirect_to_login_and_back(harness: AppHarness) -> None:
    response = harness.client.get("/tasks?state=failed", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=/tasks")
    token = csrf_of(harness.client.get(response.headers["location"]).text)
    response = harness.client.post(
        "/login",
        data={
            "username": "admin",
            "password": PASSWORDS["admin"],
            "csrf_token": token,
            "next": "/tasks?state=failed",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/tasks?state=failed"
    assert harness.client.get("/tasks").status_code == 200


def test_login_refuses_open_redirect(harness: AppHarness) -> None:
    token = csrf_of(harness.client.get("/login").text)
    response = harness.client.post(
        "/login",
        data={
            "username": "admin",
            "password": PASSWORDS["admin"],
            "csrf_token": token,
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_wrong_password_and_unknown_user_look_the_same(harness: AppHarness) -> None:
    wrong = login(harness.client, "admin", "not-the-password")
    unknown = login(harness.client, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password" in wrong.text
    assert "Wrong user name or password" in unknown.text
    assert harness.client.get("/", follow_redirects=False).status_code == 303


def test_lockout_after_repeated_failures_even_with_right_password(harness: AppHarness) -> None:
    for _ in range(FREE_FAILURES + 1):
        login(harness.client, "operator", "wrong-password!")
    response = login(harness.client, "operator", PASSWORDS["operator"])
    assert response.status_code == 429
    assert "Too many failed attempts" in response.text
    with unit_of_work(harness.sessions) as session:
        user = get_user_by_name("operator", session=session)
        assert user is not None and user.locked_until is not None
        user.locked_until = None  # the wait is over
    assert login(harness.client, "operator", PASSWORDS["operator"]).status_code == 303
    with unit_of_work(harness.sessions) as session:
        user = get_user_by_name("operator", session=session)
        assert user is not None and user.failed_logins == 0


def test_login_without_csrf_token_is_rejected(harness: AppHarness) -> None:
    harness.client.get("/login")
    response = harness.client.post(
        "/login",
        data={"username": "admin", "password": PASSWORDS["admin"]},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert harness.client.get("/", follow_redirects=False).status_code == 303


def test_forms_without_or_with_wrong_csrf_are_rejected(harness: AppHarness) -> None:
    harness.login("admin")
    form = {"description": "Smooth 4mm", "series_number": "901", "fwhm_mm": "4"}
    assert harness.client.post("/filters", data=form).status_code == 403
    bad = harness.client.post("/filters", data={**form, "csrf_token": "forged"})
    assert bad.status_code == 403
    assert "Smooth 4mm" not in harness.client.get("/filters").text
    token = csrf_of(harness.client.get("/filters").text)
    ok = harness.client.post("/filters", data={**form, "csrf_token": token})
    assert ok.status_code == 200 and "Smooth 4mm" in ok.text


def test_cookie_api_changes_need_csrf_header(harness: AppHarness) -> None:
    harness.login("admin")
    body = {"description": "F", "series_number": 5}
    assert harness.client.post("/api/v1/filters", json=body).status_code == 403
    token = csrf_of(harness.client.get("/filters").text)
    response = harness.client.post("/api/v1/filters", json=body, headers={"X-CSRF-Token": token})
    assert response.status_code == 201


def test_logout_ends_the_session(harness: AppHarness) -> None:
    harness.login("viewer")
    token = csrf_of(harness.client.get("/").text)
    assert harness.client.post("/logout", data={"csrf_token": token}).status_code == 200
    assert harness.client.get("/", follow_redirects=False).status_code == 303


def test_api_token_lifecycle(harness: AppHarness) -> None:
    harness.login("operator")
    token = csrf_of(harness.client.get("/account").text)
    created = harness.client.post(
        "/api/v1/tokens", json={"label": "script"}, headers={"X-CSRF-Token": token}
    )
    assert created.status_code == 201
    clear = created.json()["token"]
    harness.client.cookies.clear()
    bearer = {"Authorization": f"Bearer {clear}"}
    assert harness.client.get("/api/v1/me", headers=bearer).json() == {
        "name": "operator",
        "role": "operator",
    }
    # A token is for scripts: it does not open the console pages.
    assert harness.client.get("/", headers=bearer, follow_redirects=False).status_code == 303
    deleted = harness.client.delete(f"/api/v1/tokens/{created.json()['id']}", headers=bearer)
    assert deleted.status_code == 204
    assert harness.client.get("/api/v1/me", headers=bearer).status_code == 401


def test_production_requires_a_real_secret(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    sessions = make_sessionmaker(engine)
    for secret in (None, "changeme", "short-but-private"):
        settings = make_settings(tmp_path, production=True, secret_key=secret)
        with pytest.raises(ConfigurationError):
            create_app(settings, session_factory=sessions, pipeline=FakePipeline())
    good = make_settings(tmp_path, production=True, secret_key="x" * 40)
    assert create_app(good, session_factory=sessions, pipeline=FakePipeline()) is not None
    engine.dispose()
