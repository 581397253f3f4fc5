"""Tasks made up for the console: rows a console test or benchmark lists without a pipeline."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from petray.db.models import Patient, Series, Study, Task, TaskEvent
from petray.domain import Stage, State
from petray.tasks import new_task_id

PATIENT_NAME = "Doe^Jane"


def add_task(
    session: Session,
    *,
    task_id: str | None = None,
    stage: Stage = Stage.PROCESSING,
    state: State = State.WAITING,
    calling_ae: str = "SCANNER1",
    patient_name: str = PATIENT_NAME,
    reason: str = "",
    images: int = 10,
    visited: Sequence[Stage] = (Stage.COMPILING,),
) -> str:
    """A task with its patient, study and series; one event per visited stage, then the current."""
    task_id = task_id or new_task_id()
    number = int(task_id, 16)
    patient = Patient(patient_id=f"P{task_id}", name=patient_name)
    study = Study(patient=patient, study_instance_uid=f"1.2.3.{number}")
    series = Series(
        study=study,
        series_instance_uid=f"1.2.3.4.{number}",
        modality="PT",
        description="WB FDG",
    )
    session.add_all([patient, study, series])
    session.flush()
    session.add(
        Task(
            id=task_id,
            series_pk=series.id,
            calling_ae=calling_ae,
            peer_host="127.0.0.1",
            stage=stage,
            state=state,
            reason=reason,
            images=images,
            expected_images=images,
            details={},
        )
    )
    for earlier in visited:
        session.add(TaskEvent(task_id=task_id, stage=earlier, state=State.ACTIVE))
    session.add(TaskEvent(task_id=task_id, stage=stage, state=state, message=reason))
    return task_id
