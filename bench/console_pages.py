"""Time the console's dashboard, tasks list and task page with 1000 tasks in the database.

    .venv/bin/python bench/console_pages.py [--tasks 1000] [--repeat 20]

Runs the app in-process (TestClient, SQLite in a temporary directory, no pipeline behind it), so
the figures are the app's own cost: queries plus template rendering, no network or Ray.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import re
from collections.abc import Iterator

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.demo.tasks import add_task
from petray.domain import Stage, State
from petray.ports import ActorStatus
from petray.settings import Settings
from petray.site.users import create_user
from serve.app import create_app

USER, PASSWORD = "operator", "bench-lantern-52"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class NoPipeline:
    """The console without a gateway behind it: every actor is reported down."""

    async def result_ready(self, task_id: str) -> None:
        pass

    async def resume(self, task_id: str) -> None:
        pass

    async def status(self) -> list[ActorStatus]:
        return []

    async def reload_dicom_listener(self) -> None:
        pass


def console(home: Path) -> Iterator[tuple[TestClient, sessionmaker[Session]]]:
    """The app on a fresh SQLite database in ``home``, logged in as an operator."""
    engine = make_engine(f"sqlite:///{home / 'petray.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with unit_of_work(sessions) as session:
        create_user(session=session, name=USER, password=PASSWORD, role="operator")
    settings = Settings(home=home, remote_url="http://127.0.0.1:9", remote_timeout_s=1.0)
    app = create_app(settings, session_factory=sessions, pipeline=NoPipeline())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        token = CSRF_RE.search(client.get("/login").text)
        assert token, "the login page has no CSRF token"
        form = {"username": USER, "password": PASSWORD, "csrf_token": token.group(1), "next": "/"}
        assert client.post("/login", data=form, follow_redirects=False).status_code == 303
        yield client, sessions
    engine.dispose()


STATES = [State.DONE, State.DONE, State.DONE, State.FAILED, State.ACTIVE, State.WAITING]


def fill(sessions: sessionmaker[Session], count: int) -> str:
    stages = list(Stage)
    with unit_of_work(sessions) as session:
        last = ""
        for i in range(count):
            state = STATES[i % len(STATES)]
            last = add_task(
                session,
                task_id=f"{i:032x}",
                stage=Stage.DONE if state == State.DONE else stages[i % 8],
                state=state,
                calling_ae=f"AE{i % 7}",
                patient_name=f"Bench^Patient{i}",
                images=47,
                visited=stages[: i % 9],
            )
    return last


def timed(client: object, path: str, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)  # type: ignore[attr-defined]
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(samples) * 1000, max(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for client, sessions in console(Path(tmp)):
            started = time.perf_counter()
            last = fill(sessions, args.tasks)
            print(f"filled {args.tasks} tasks in {time.perf_counter() - started:.1f} s")
            for label, path in [
                ("dashboard", "/"),
                ("tasks list (50/page)", "/tasks"),
                ("tasks list, filtered+sorted", "/tasks?state=done&sort=sender&order=asc"),
                ("tasks list, last page", f"/tasks?page={args.tasks // 50}"),
                ("task page", f"/tasks/{last}"),
                ("API tasks (50)", "/api/v1/tasks"),
            ]:
                median, worst = timed(client, path, args.repeat)
                print(f"{label:32s} median {median:7.1f} ms   max {worst:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
