"""STOW-RS delivery end to end (issue 15) against Orthanc with its DICOMweb plugin.

Each test drives the StoreSCU stage as the pipeline does (``StageWorker._run`` -> ``handle``,
without Ray: the actor's class over the real database) for a task whose derived series were
written by petray.imaging.derive, to a destination device added like ``petray device add
--stow-url``.
What arrived is read back over DICOMweb itself: QIDO-RS for the series and instances, WADO-RS
for the files.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent, SentInstance, Task, TaskDestination
from petray.demo.orthanc import DICOMWEB_PLUGIN, OrthancPeer, start_orthanc
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.stow import StowEndpoint, store_instances
from petray.domain import Stage, State
from petray.imaging.derive import write_derived_series
from petray.imaging.filters import FilterSpec
from petray.imaging.volume import load_series_volume
from petray.settings import Settings
from petray.site.siteconfig import add_stow_device
from petray.stages.destinations import assign_destinations
from petray.stages.outputs import BuiltSeries, record_outputs
from tests.support.app import make_task
from tests.support.peers import free_port, qido
from tests.support.store_scu import store_scu

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb is not installed"),
]

SLICES = 12
UID_ROOT = "1.2.826.0.1.3680043.10.1299"


def derived_series(root: Path, *, seed: int = 15) -> tuple[str, str, list[Path]]:
    """(study UID, derived series UID, files): a synthetic PET series denoised stand-in."""
    sources = write_series(
        make_pet_series(slices=SLICES, rows=16, cols=16, seed=seed), root / "src"
    )
    volume = load_series_volume(sources)
    series_uid = pydicom.uid.generate_uid(prefix=f"{UID_ROOT}.")
    files = write_derived_series(
        (volume.data * 0.9).astype(np.float32),
        list(volume.slice_paths),
        root / "out",
        series_instance_uid=series_uid,
        series_number=901,
        series_description="PET WB Gauss 4mm",
        derivation_description="petray denoising (test); Gauss 4mm",
        uid_root=UID_ROOT,
    )
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return study, series_uid, files


def sending_task(sessions: sessionmaker[Session], files: list[Path], series_uid: str) -> str:
    """A task in the sending stage with ``files`` as its one output, destinations assigned."""
    task_id = make_task(sessions, stage=Stage.SENDING, state=State.ACTIVE)
    spec = FilterSpec(id=None, description="Gauss 4mm", series_number=901, fwhm_mm=4.0)
    with unit_of_work(sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None
        assign_destinations(task, session=session)
        built = BuiltSeries(spec, series_uid, "PET WB Gauss 4mm", files[0].parent, len(files))
        record_outputs(task, [built], session=session)
    return task_id


def sop_uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def wado_series(peer: OrthancPeer, study: str, series: str) -> list[Dataset]:
    response = peer.client.get(
        f"/dicom-web/studies/{study}/series/{series}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    response.raise_for_status()
    raw = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    return [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in message.iter_parts()]


def destination_row(sessions: sessionmaker[Session], task_id: str) -> TaskDestination:
    with sessions() as session:
        return session.scalars(
            select(TaskDestination).where(TaskDestination.task_id == task_id)
        ).one()


def task_row(sessions: sessionmaker[Session], task_id: str) -> Task:
    with sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


@pytest.fixture
def dicomweb(tmp_path: Path) -> Iterator[OrthancPeer]:
    with start_orthanc(tmp_path / "orthanc", dicomweb=True) as peer:
        yield peer


def test_a_derived_series_is_delivered_by_stow_rs_and_reads_back_over_qido_and_wado(
    sqlite_sessions: sessionmaker[Session],
    settings: Settings,
    dicomweb: OrthancPeer,
    tmp_path: Path,
) -> None:
    study, series_uid, files = derived_series(tmp_path)
    with unit_of_work(sqlite_sessions) as session:
        add_stow_device(session=session, name="vna", url=dicomweb.dicomweb_url)
    task_id = sending_task(sqlite_sessions, files, series_uid)

    outcome = store_scu(sqlite_sessions, settings)._run(task_id)

    assert outcome.advance_to == Stage.DONE
    task = task_row(sqlite_sessions, task_id)
    assert (task.stage, task.state) == ("done", "done"), task.reason
    row = destination_row(sqlite_sessions, task_id)
    assert (row.state, row.sent, row.total, row.stow_url) == (
        "done",
        SLICES,
        SLICES,
        dicomweb.dicomweb_url,
    )
    [series] = qido(dicomweb, f"/studies/{study}/series")
    assert series.SeriesInstanceUID == series_uid
    instances = qido(dicomweb, f"/studies/{study}/series/{series_uid}/instances")
    assert sorted(i.SOPInstanceUID for i in instances) == sorted(sop_uids(files))
    retrieved = {str(ds.SOPInstanceUID): ds for ds in wado_series(dicomweb, study, series_uid)}
    assert len(retrieved) == SLICES
    for path in files:
        sent = pydicom.dcmread(path)
        back = retrieved[str(sent.SOPInstanceUID)]
        assert np.array_equal(back.pixel_array, sent.pixel_array)
    with sqlite_sessions() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "association.out")
        ).all()
    assert (event.actor, event.source, event.outcome) == ("STOW-RS", dicomweb.dicomweb_url, "ok")
    assert event.detail["instances"] == SLICES


def test_resumed_delivery_sends_only_what_was_not_acknowledged(
    sqlite_sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    # Orthanc overwrites a re-sent instance and logs a new NewInstance change for it, so a
    # duplicate would show in its change log (by default it silently keeps the first copy).
    with start_orthanc(
        tmp_path / "orthanc", dicomweb=True, config_overrides={"OverwriteInstances": True}
    ) as peer:
        _, series_uid, files = derived_series(tmp_path)
        with unit_of_work(sqlite_sessions) as session:
            add_stow_device(session=session, name="vna", url=peer.dicomweb_url)
        task_id = sending_task(sqlite_sessions, files, series_uid)
        row = destination_row(sqlite_sessions, task_id)
        # An earlier attempt stored and recorded the first five, then the gateway died.
        earlier: list[str] = []
        store_instances(StowEndpoint(peer.dicomweb_url), files[:5], on_sent=earlier.append)
        with unit_of_work(sqlite_sessions) as session:
            session.add_all(
                SentInstance(destination_pk=row.id, sop_instance_uid=u) for u in earlier
            )
        before = {c["ID"]: c["Seq"] for c in peer.changes() if c["ChangeType"] == "NewInstance"}
        assert len(before) == 5

        outcome = store_scu(sqlite_sessions, settings)._run(task_id)

        assert outcome.advance_to == Stage.DONE
        changes = [c for c in peer.changes() if c["ChangeType"] == "NewInstance"]
        assert len(changes) == SLICES
        # The five acknowledged earlier were not stored again: their change is the first one.
        assert {c["ID"]: c["Seq"] for c in changes if c["ID"] in before} == before
        assert peer._json("GET", "/statistics")["CountInstances"] == SLICES
        assert sorted(peer.sop_instance_uids()) == sorted(sop_uids(files))
    row = destination_row(sqlite_sessions, task_id)
    # The sent count is taken from the progress rows: the earlier five count too.
    assert (row.state, row.sent) == ("done", SLICES)


def test_wrong_credentials_fail_the_delivery_at_once_with_the_reason(
    sqlite_sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    with start_orthanc(tmp_path / "orthanc", dicomweb=True, users={"petray": "right-one"}) as peer:
        _study, series_uid, files = derived_series(tmp_path)
        with unit_of_work(sqlite_sessions) as session:
            add_stow_device(
                session=session, name="vna", url=peer.dicomweb_url, basic="petray:wrong-one"
            )
        task_id = sending_task(sqlite_sessions, files, series_uid)
        store_scu(sqlite_sessions, settings)._run(task_id)
        assert peer.instances() == []
    task = task_row(sqlite_sessions, task_id)
    assert (task.stage, task.state, task.retry_attempts) == ("sending", "failed", 0)
    assert "HTTP 401" in task.reason and "token or user:password" in task.reason
    assert "wrong-one" not in task.reason
    row = destination_row(sqlite_sessions, task_id)
    assert row.state == "failed" and "HTTP 401" in row.reason


def test_the_right_credentials_are_sent(
    sqlite_sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    with start_orthanc(tmp_path / "orthanc", dicomweb=True, users={"petray": "right-one"}) as peer:
        _study, series_uid, files = derived_series(tmp_path)
        with unit_of_work(sqlite_sessions) as session:
            add_stow_device(
                session=session, name="vna", url=peer.dicomweb_url, basic="petray:right-one"
            )
        task_id = sending_task(sqlite_sessions, files, series_uid)
        assert store_scu(sqlite_sessions, settings)._run(task_id).advance_to == Stage.DONE
        assert len(peer.instances()) == SLICES


def test_an_unreachable_destination_is_retried_within_the_delivery_budget(
    sqlite_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from petray.settings import load_settings

    settings = load_settings(
        home=tmp_path / "home", retry_base_s=0.2, retry_cap_s=0.2, delivery_retry_budget_s=0.5
    )
    _study, series_uid, files = derived_series(tmp_path)
    with unit_of_work(sqlite_sessions) as session:
        add_stow_device(session=session, name="vna", url=f"http://127.0.0.1:{free_port()}/dw")
    task_id = sending_task(sqlite_sessions, files, series_uid)
    actor = store_scu(sqlite_sessions, settings)

    first = actor._run(task_id)
    assert first.retry_in is not None and first.retry_in <= 0.5
    task = task_row(sqlite_sessions, task_id)
    assert (task.state, task.retry_attempts) == ("waiting", 1)
    assert "cannot connect" in task.last_error
    assert destination_row(sqlite_sessions, task_id).state == "waiting"

    import time

    time.sleep(0.6)
    assert actor._run(task_id).retry_in is None
    task = task_row(sqlite_sessions, task_id)
    assert task.state == "failed" and task.reason.startswith("gave up after 2 attempts")
