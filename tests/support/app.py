"""Shared factories for the HTTP app tests: an app on SQLite in tmp_path and a fake pipeline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.demo.tasks import add_task
from petray.ports import ActorStatus
from petray.settings import Settings
from petray.site.users import create_user
from serve.app import create_app
from tests.support.databases import migrated_sqlite

CALLBACK_TOKEN = "test-callback-token-0123456789"
# Issue 9: a password may not contain its user name.
PASSWORDS = {
    "admin": "granite-harbour-41",
    "operator": "quiet-lantern-52",
    "viewer": "amber-meadow-63",
}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class FakePipeline:
    """Records what the app asked of the pipeline."""

    calls: list[tuple[str, str | None]] = field(default_factory=list)
    actors: list[ActorStatus] = field(
        default_factory=lambda: [
            ActorStatus(name="compilator", alive=True, backlog=2, processed=10, restarts=0),
            ActorStatus(name="store_scp", alive=True, restarts=0, listening=True),
            ActorStatus(name="store_scu", alive=True, restarts=0),
        ]
    )

    async def result_ready(self, task_id: str) -> None:
        self.calls.append(("result_ready", task_id))

    async def resume(self, task_id: str) -> None:
        self.calls.append(("resume", task_id))

    async def status(self) -> list[ActorStatus]:
        self.calls.append(("status", None))
        return list(self.actors)

    async def reload_dicom_listener(self) -> None:
        self.calls.append(("reload_dicom_listener", None))


@dataclass
class AppHarness:
    client: TestClient
    sessions: sessionmaker[Session]
    pipeline: FakePipeline
    settings: Settings
    home: Path

    def login(self, role: str) -> TestClient:
        login(self.client, role, PASSWORDS[role])
        return self.client


def make_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "callback_token": CALLBACK_TOKEN,
        # Nothing listens here: the dashboard's ping fails fast (connection refused).
        "remote_url": "http://127.0.0.1:9",
        "remote_timeout_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


def seed_users(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        for role, password in PASSWORDS.items():
            create_user(session=session, name=role, password=password, role=role)


def make_task(sessions: sessionmaker[Session], **fields: Any) -> str:
    """``add_task`` in its own committed unit of work."""
    with unit_of_work(sessions) as session:
        return add_task(session, **fields)


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(client: TestClient, name: str, password: str) -> Any:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


def page_csrf(client: TestClient, path: str = "/account") -> str:
    return csrf_of(client.get(path).text)


def build_harness(
    tmp_path: Path, *, pipeline: FakePipeline | None = None, **overrides: Any
) -> Iterator[AppHarness]:
    home = tmp_path / "home"
    home.mkdir()
    settings = make_settings(home, **overrides)
    engine = make_engine(migrated_sqlite(tmp_path / "petray.db"))
    sessions = make_sessionmaker(engine)
    seed_users(sessions)
    pipeline = pipeline or FakePipeline()
    app = create_app(settings, session_factory=sessions, pipeline=pipeline)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield AppHarness(client, sessions, pipeline, settings, home)
    engine.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[AppHarness]:
    yield from build_harness(tmp_path)
