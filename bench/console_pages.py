"""Time the console's dashboard, tasks list and task page with 1000 tasks in the database.

    .venv/bin/python bench/console_pages.py [--tasks 1000] [--repeat 20]

Runs the app in-process (TestClient, SQLite in a temporary directory, a fake pipeline), so the
figures are the app's own cost: queries plus template rendering, no network or Ray.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.domain import Stage, State
from tests.test_app_helpers import add_task, build_harness

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
        for harness in build_harness(Path(tmp)):
            started = time.perf_counter()
            last = fill(harness.sessions, args.tasks)
            print(f"filled {args.tasks} tasks in {time.perf_counter() - started:.1f} s")
            client = harness.login("operator")
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
