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

from petray.db.engine import unit_of_work
from petray.db.models import Patient, Series, Study, Task, TaskEvent
from petray.domain import Stage, State
from tests.test_app_helpers import build_harness

STATES = [State.DONE, State.DONE, State.DONE, State.FAILED, State.ACTIVE, State.WAITING]


def fill(sessions: object, count: int) -> str:
    with unit_of_work(sessions) as session:  # type: ignore[arg-type]
        last = ""
        for i in range(count):
            patient = Patient(patient_id=f"B{i:06d}", name=f"Bench^Patient{i}")
            study = Study(patient=patient, study_instance_uid=f"1.2.826.0.1.1.{i}")
            series = Series(
                study=study,
                series_instance_uid=f"1.2.826.0.1.2.{i}",
                modality="PT",
                description="WB",
            )
            session.add_all([patient, study, series])
            session.flush()
            state = STATES[i % len(STATES)]
            stage = Stage.DONE if state == State.DONE else list(Stage)[i % 8]
            last = f"{i:032x}"
            session.add(
                Task(
                    id=last,
                    series_pk=series.id,
                    calling_ae=f"AE{i % 7}",
                    peer_host="127.0.0.1",
                    stage=stage,
                    state=state,
                    images=47,
                    expected_images=47,
                    details={},
                )
            )
            for s in list(Stage)[: 1 + i % 9]:
                session.add(TaskEvent(task_id=last, stage=s, state=State.ACTIVE))
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
