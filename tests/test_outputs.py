"""Output series: which filters apply, their UIDs, and their bookkeeping, on both databases."""

from __future__ import annotations

from itertools import count
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import (
    OutputSeries,
    Patient,
    PostFilter,
    SentInstance,
    Series,
    Study,
    Task,
    TaskDestination,
)
from petray.dicom.uids import UID_MAX_LENGTH, validate_uid
from petray.domain import Stage, State
from petray.imaging.filters import FilterSpec
from petray.settings import Settings
from petray.stages.outputs import (
    DEFAULT_DESCRIPTION,
    IS_MAX,
    BuiltSeries,
    clear_outputs,
    derivation_description,
    filters_for,
    output_dir,
    output_files,
    output_series_uid,
    record_outputs,
    series_job,
)

MODEL = "Biograph Vision 600"
_serial = count(1)


def make_task(
    session: Session,
    *,
    model: str = MODEL,
    radiopharmaceutical: str = "FDG",
    series_number: int | None = 3,
) -> Task:
    n = next(_serial)
    patient = Patient(patient_id=f"P{n}")
    study = Study(study_instance_uid=f"1.2.826.0.2.{n}", patient=patient)
    series = Series(
        series_instance_uid=f"1.2.826.0.2.{n}.1",
        study=study,
        model_name=model,
        series_number=series_number,
    )
    task = Task(
        id=f"{n:032x}",
        series=series,
        stage=Stage.UNPACKING,
        state=State.ACTIVE,
        radiopharmaceutical=radiopharmaceutical,
    )
    session.add_all([patient, study, series, task])
    session.flush()
    return task


def add_filter(session: Session, series_number: int, **overrides: object) -> PostFilter:
    row = PostFilter(
        description=f"Gauss {series_number}",
        series_number=series_number,
        fwhm_mm=4.0,
        noise_pct=0.0,
        mode="append",
        scanner_model="all",
        radiopharmaceutical="all",
        enabled=True,
    )
    for key, value in overrides.items():
        setattr(row, key, value)
    session.add(row)
    session.flush()
    return row


def add_destination(session: Session, task: Task, name: str, port: int) -> TaskDestination:
    row = TaskDestination(
        task_id=task.id,
        name=name,
        ae_title=name.upper(),
        host="127.0.0.1",
        port=port,
        state="done",
        sent=5,
        total=5,
        reason="old",
    )
    session.add(row)
    session.flush()
    return row


def test_filters_for_keeps_enabled_matching_filters_in_series_order(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session)
        add_filter(session, 503, scanner_model="Discovery MI")
        add_filter(session, 502, scanner_model=MODEL.upper())  # matching ignores case
        add_filter(session, 501)
        add_filter(session, 504, radiopharmaceutical="PSMA-11")
        add_filter(session, 505, enabled=False)
        add_filter(session, 506, radiopharmaceutical="fdg")
        add_filter(session, 507, scanner_model="", fwhm_mm=0.0, noise_pct=20.0, mode="replace")
        specs = filters_for(task, session=session)
    assert [s.series_number for s in specs] == [501, 502, 506, 507]
    assert all(s.id is not None for s in specs)
    last = specs[-1]
    assert (last.fwhm_mm, last.noise_pct, last.mode) == (0.0, 20.0, "replace")


def test_filters_for_falls_back_to_one_denoised_series(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, series_number=3)
        add_filter(session, 501, enabled=False)
        add_filter(session, 502, scanner_model="Discovery MI")
        [spec] = filters_for(task, session=session)
        unnumbered = make_task(session, series_number=None)
        huge = make_task(session, series_number=IS_MAX - 10)
        [unnumbered_spec] = filters_for(unnumbered, session=session)
        [huge_spec] = filters_for(huge, session=session)
    assert spec == FilterSpec(id=None, description=DEFAULT_DESCRIPTION, series_number=1003)
    assert not spec.smooths
    assert unnumbered_spec.series_number == 1000
    # SeriesNumber is IS: never beyond 2**31 - 1 (PS3.5 6.2).
    assert huge_spec.series_number == IS_MAX


def test_output_series_uid_is_deterministic_and_valid(settings: Settings) -> None:
    a = FilterSpec(id=1, description="Gauss 4", series_number=501, fwhm_mm=4.0)
    b = FilterSpec(id=2, description="Gauss 6", series_number=502, fwhm_mm=6.0)
    task_id, other_task = "a" * 32, "b" * 32
    uid = output_series_uid(settings.uid_root, task_id, a)
    assert uid == output_series_uid(settings.uid_root, task_id, a)
    assert uid.startswith(settings.uid_root + ".")
    assert validate_uid(uid) == uid
    assert len(uid) <= UID_MAX_LENGTH
    others = {
        output_series_uid(settings.uid_root, task_id, b),
        output_series_uid(settings.uid_root, other_task, a),
    }
    assert uid not in others and len(others) == 2


@pytest.mark.parametrize(
    "root", ["1.2.3", "1.2.3.", "1.2.826.0.1.3680043.10.1299.4294967295.123456"]
)
def test_output_series_uid_fits_any_reasonable_root(root: str) -> None:
    spec = FilterSpec(id=None, description=DEFAULT_DESCRIPTION, series_number=1003)
    uid = output_series_uid(root, "c" * 32, spec)
    assert validate_uid(uid) == uid
    assert len(uid) <= UID_MAX_LENGTH
    assert uid.startswith(root.rstrip(".") + ".")


def test_derivation_description_names_the_processing_and_filter() -> None:
    spec = FilterSpec(id=1, description="Gauss", series_number=501, fwhm_mm=4.5, noise_pct=10)
    text = derivation_description(spec, "guided-3d")
    assert "guided-3d" in text
    assert "Gauss" in text
    assert "FWHM 4.5 mm" in text
    assert "noise blended 10%" in text
    plain = derivation_description(FilterSpec(id=None, description="Denoised", series_number=1), "")
    assert "FWHM" not in plain and "noise blended" not in plain
    # DerivationDescription is ST (PS3.5 6.2): 1024 characters at most.
    assert len(derivation_description(spec, "x" * 2000)) == 1024


def built(root: Path, task: Task, number: int, files: int) -> BuiltSeries:
    spec = FilterSpec(id=None, description=f"S{number}", series_number=number)
    directory = output_dir(root, task.id, spec)
    directory.mkdir(parents=True)
    for i in range(files):
        (directory / f"{i:05d}.dcm").write_bytes(b"DICM")
    return BuiltSeries(
        spec=spec,
        series_instance_uid=f"1.2.3.{number}",
        description=spec.description,
        directory=directory,
        instances=files,
    )


def test_record_outputs_and_list_their_files(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session)
        add_destination(session, task, "pacs", 104)
        record_outputs(
            task, [built(tmp_path, task, 502, 2), built(tmp_path, task, 501, 3)], session=session
        )
        task_id = task.id
    with sessions() as session:
        stored = session.get(Task, task_id)
        assert stored is not None
        assert sorted((o.series_number, o.instances) for o in stored.outputs) == [
            (501, 3),
            (502, 2),
        ]
        [destination] = stored.destinations
        assert (destination.total, destination.sent, destination.state, destination.reason) == (
            5,
            0,
            "waiting",
            "",
        )
        files = output_files(stored)
    assert [(f.parent.name, f.name) for f in files] == [
        ("series-501-default", "00000.dcm"),
        ("series-501-default", "00001.dcm"),
        ("series-501-default", "00002.dcm"),
        ("series-502-default", "00000.dcm"),
        ("series-502-default", "00001.dcm"),
    ]


def test_clear_outputs_forgets_only_that_task(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        task, other = make_task(session), make_task(session)
        for t in (task, other):
            record_outputs(t, [built(tmp_path, t, 501, 2)], session=session)
            destination = add_destination(session, t, "pacs", 104)
            session.add(SentInstance(destination_pk=destination.id, sop_instance_uid="1.2.3.4"))
        task_id, other_id = task.id, other.id
    with unit_of_work(sessions) as session:
        clear_outputs(tmp_path, task_id, session=session)
    assert not (tmp_path / task_id).exists()
    assert (tmp_path / other_id / "series-501-default" / "00000.dcm").exists()
    with sessions() as session:
        owners = session.scalars(select(OutputSeries.task_id)).all()
        assert owners == [other_id]
        sent_for = session.scalars(
            select(TaskDestination.task_id).join(
                SentInstance, SentInstance.destination_pk == TaskDestination.id
            )
        ).all()
        # Delivery progress stays: the rebuilt series has the same UIDs and content, and what a
        # destination acknowledged (an early delivery of an unpacking that stopped) is not resent.
        assert sorted(sent_for) == sorted([task_id, other_id])
        # Destinations stay: the task is still delivered to them after the rebuild.
        assert session.scalar(select(func.count()).select_from(TaskDestination)) == 2


def test_record_outputs_counts_what_a_destination_already_acknowledged(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session)
        destination = add_destination(session, task, "pacs", 104)
        for uid in ("1.2.3.1", "1.2.3.2"):
            session.add(SentInstance(destination_pk=destination.id, sop_instance_uid=uid))
        session.flush()
        record_outputs(task, [built(tmp_path, task, 501, 3)], session=session)
        assert (destination.total, destination.sent, destination.state) == (3, 2, "sending")


def test_clear_outputs_of_a_task_without_outputs_is_harmless(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session)
        clear_outputs(tmp_path, task.id, session=session)
        assert task.outputs == []


def test_two_filters_with_one_series_number_get_distinct_outputs(
    tmp_path: Path, settings: Settings
) -> None:
    a = FilterSpec(id=1, description="Gauss 4", series_number=501, fwhm_mm=4.0)
    b = FilterSpec(id=2, description="Gauss 6", series_number=501, fwhm_mm=6.0)
    task_id = "d" * 32
    assert output_series_uid(settings.uid_root, task_id, a) != output_series_uid(
        settings.uid_root, task_id, b
    )
    assert output_dir(tmp_path, task_id, a) != output_dir(tmp_path, task_id, b)


def test_series_job_names_and_places_the_filter_output(tmp_path: Path, settings: Settings) -> None:
    spec = FilterSpec(id=7, description="Gauss 6", series_number=502, fwhm_mm=6.0, noise_pct=20)
    task_id = "e" * 32
    job = series_job(
        tmp_path,
        task_id,
        spec,
        uid_root=settings.uid_root,
        original_description="PET WB",
        algorithm="guided-3d",
    )
    assert job.outdir == output_dir(tmp_path, task_id, spec)
    assert job.series_instance_uid == output_series_uid(settings.uid_root, task_id, spec)
    assert job.series_number == 502
    assert job.series_description == "PET WB Gauss 6"
    assert job.derivation_description == derivation_description(spec, "guided-3d")
    assert job.uid_root == settings.uid_root
    result = BuiltSeries.from_job(spec, job, 645)
    assert (result.series_instance_uid, result.description) == (
        job.series_instance_uid,
        job.series_description,
    )
    assert (result.directory, result.instances, result.spec) == (job.outdir, 645, spec)
