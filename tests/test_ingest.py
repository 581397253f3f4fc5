"""InstanceStore on SQLite and PostgreSQL: file and rows first, hierarchy upsert, UID checks."""

from __future__ import annotations

import threading
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom.config
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.models import Instance, Patient, Series, Study
from petray.demo.synth import make_pet_series
from petray.dicom.header import InstanceHeader, extract_instance_header
from petray.dicom.ingest import DiskFull, InstanceStore, ReceivedInstance, upsert_hierarchy
from petray.errors import InvalidInstance
from petray.imaging.decay import (
    RecordedDecay,
    SliceDecay,
    read_slice_decays,
    recorded_slice_decays,
)

THREADS = 8


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def series() -> list[tuple[bytes, InstanceHeader]]:
    """Four tiny slices of one synthetic PET series, encoded as the SCP would receive them."""
    return [
        (_encode(ds), extract_instance_header(ds))
        for ds in make_pet_series(slices=4, rows=8, cols=8)
    ]


def _store(root: Path, sessions: sessionmaker[Session], **kwargs: object) -> InstanceStore:
    # The gateway creates the instances directory at start-up (Settings.ensure_dirs).
    root.mkdir(parents=True, exist_ok=True)
    return InstanceStore(root, sessions, min_free_bytes=0, **kwargs)  # type: ignore[arg-type]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_store_writes_file_and_rows_before_returning(
    tmp_path: Path, sessions: sessionmaker[Session], series: list[tuple[bytes, InstanceHeader]]
) -> None:
    store = _store(tmp_path / "instances", sessions, fsync=True)
    received = [
        store.store(data, header, calling_ae="SCANNER", peer_host="127.0.0.1")
        for data, header in series
    ]

    assert len({r.instance_pk for r in received}) == len(series)
    assert len({r.series_pk for r in received}) == 1
    with sessions() as session:
        for message, (data, header) in zip(received, series, strict=True):
            row = session.get(Instance, message.instance_pk)
            assert row is not None
            assert row.sop_instance_uid == header.sop_instance_uid == message.sop_instance_uid
            assert row.calling_ae == "SCANNER"
            assert row.slice_position == pytest.approx(header.slice_position)
            assert row.number_of_slices == message.number_of_slices == 4
            assert Path(row.path).read_bytes() == data
            # Files are named by validated UIDs under the series directory, no patient fields.
            assert Path(row.path).parent.name == header.series_instance_uid
            assert header.patient_id not in row.path
        series_row = session.get(Series, received[0].series_pk)
        assert series_row is not None and series_row.modality == "PT"
    # No temporary ".part" file is left behind.
    assert len(_files(tmp_path / "instances")) == len(series)


def test_hierarchy_upsert_updates_patient_on_new_data(
    sessions: sessionmaker[Session], series: list[tuple[bytes, InstanceHeader]]
) -> None:
    header = series[0][1]
    with sessions.begin() as session:
        first = upsert_hierarchy(header, session=session)
    renamed = replace(header, patient_name="Doe^Janet", patient_sex="F", study_description="PET WB")
    with sessions.begin() as session:
        again = upsert_hierarchy(renamed, session=session)
    assert again == first
    with sessions() as session:
        patients = session.scalars(select(Patient)).all()
        assert [(p.patient_id, p.name, p.sex) for p in patients] == [
            (header.patient_id, "Doe^Janet", "F")
        ]
        study = session.scalar(select(Study))
        assert study is not None and study.description == "PET WB"
    assert _count(sessions, Series) == 1


def test_new_series_of_same_patient_updates_patient_through_the_store(
    tmp_path: Path, sessions: sessionmaker[Session], series: list[tuple[bytes, InstanceHeader]]
) -> None:
    store = _store(tmp_path / "instances", sessions)
    data, header = series[0]
    store.store(data, header, calling_ae="A", peer_host="h")
    # The patient was renamed at the scanner; the next series carries the new name.
    later = replace(
        header,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        patient_name="Roe^Jane",
    )
    store.store(data, later, calling_ae="A", peer_host="h")
    with sessions() as session:
        names = session.scalars(select(Patient.name)).all()
    assert names == ["Roe^Jane"]
    assert _count(sessions, Series) == 2
    assert _count(sessions, Study) == 1


def test_repeated_sop_instance_is_kept_as_separate_files(
    tmp_path: Path, sessions: sessionmaker[Session], series: list[tuple[bytes, InstanceHeader]]
) -> None:
    store = _store(tmp_path / "instances", sessions)
    data, header = series[0]
    first = store.store(data, header, calling_ae="A", peer_host="h")
    second = store.store(data, header, calling_ae="A", peer_host="h")
    assert first.instance_pk != second.instance_pk
    assert first.sop_instance_uid == second.sop_instance_uid
    with sessions() as session:
        paths = session.scalars(select(Instance.path).order_by(Instance.id)).all()
    assert len(paths) == 2 and paths[0] != paths[1]
    assert all(Path(p).read_bytes() == data for p in paths)
    assert len(_files(tmp_path / "instances")) == 2


def test_series_pk_is_cached_after_the_first_instance(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    series: list[tuple[bytes, InstanceHeader]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import petray.dicom.ingest

    calls: list[str] = []
    real = petray.dicom.ingest.upsert_hierarchy

    def counting(header: InstanceHeader, *, session: Session) -> int:
        calls.append(header.series_instance_uid)
        return real(header, session=session)

    monkeypatch.setattr(petray.dicom.ingest, "upsert_hierarchy", counting)
    store = _store(tmp_path / "instances", sessions)
    received = [store.store(d, h, calling_ae="A", peer_host="h") for d, h in series]
    assert len(calls) == 1
    assert {r.series_pk for r in received} == {received[0].series_pk}


@pytest.mark.parametrize(
    "field", ["series_instance_uid", "sop_instance_uid"], ids=["series", "sop"]
)
@pytest.mark.parametrize("bad", ["../../etc", "1.2.3/../../x", "1.2.3\x00/x", ".."])
def test_uid_is_validated_before_any_path_is_built(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    series: list[tuple[bytes, InstanceHeader]],
    field: str,
    bad: str,
) -> None:
    data, header = series[0]
    area = tmp_path / "area"
    root = area / "nested" / "instances"
    store = _store(root, sessions)
    with pytest.raises(InvalidInstance):
        bad_header = replace(header, **{field: bad})  # type: ignore[arg-type]
        store.store(data, bad_header, calling_ae="A", peer_host="h")
    # Nothing written anywhere: not under the root, not beside it, not above it.
    assert [p for p in area.rglob("*") if not p.is_dir()] == []
    assert sorted(p.name for p in root.parent.iterdir()) == ["instances"]
    assert _count(sessions, Instance) == 0


def test_disk_floor_refuses_before_writing(
    tmp_path: Path, sessions: sessionmaker[Session], series: list[tuple[bytes, InstanceHeader]]
) -> None:
    root = tmp_path / "instances"
    root.mkdir()
    store = InstanceStore(root, sessions, min_free_bytes=2**62)
    with pytest.raises(DiskFull):
        store.store(*series[0], calling_ae="A", peer_host="h")
    assert _files(root) == []
    assert _count(sessions, Instance) == 0


def test_database_failure_removes_the_file(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    series: list[tuple[bytes, InstanceHeader]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import petray.dicom.ingest

    def broken(header: InstanceHeader, *, session: Session) -> int:
        raise RuntimeError("database went away")

    monkeypatch.setattr(petray.dicom.ingest, "upsert_hierarchy", broken)
    root = tmp_path / "instances"
    store = _store(root, sessions)
    with pytest.raises(RuntimeError):
        store.store(*series[0], calling_ae="A", peer_host="h")
    # A file without its row would be an orphan nobody ever cleans up or processes.
    assert _files(root) == []


@pytest.mark.parametrize("stores", [1, 2], ids=["one-store", "two-stores"])
def test_concurrent_stores_of_a_new_series(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    series: list[tuple[bytes, InstanceHeader]],
    stores: int,
) -> None:
    """Threads racing on the first instances of one new series: one hierarchy, every row kept.

    With two InstanceStore objects (as two gateway processes sharing a database would have),
    the per-store lock does not serialise the upserts, so the database constraints decide.
    """
    instances = [_store(tmp_path / "instances", sessions) for _ in range(stores)]
    data, header = series[0]
    series_uid = generate_uid()  # new to this store's cache and to the database
    barrier = threading.Barrier(THREADS)
    results: list[ReceivedInstance] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        mine = replace(header, series_instance_uid=series_uid, sop_instance_uid=generate_uid())
        barrier.wait()
        try:
            received = instances[index % stores].store(data, mine, calling_ae="A", peer_host="h")
        except BaseException as exc:  # collected and asserted on below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(received)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == THREADS
    assert len({r.series_pk for r in results}) == 1
    assert _count(sessions, Instance) == THREADS
    assert _count(sessions, Series) == 1
    assert _count(sessions, Study) == 1
    assert _count(sessions, Patient) == 1
    assert len(_files(tmp_path / "instances")) == THREADS


def test_stored_file_reads_back_as_the_same_instance(
    tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
    series: list[tuple[bytes, InstanceHeader]],
) -> None:
    data, header = series[1]
    received = _store(tmp_path / "i", sqlite_sessions).store(
        data, header, calling_ae="A", peer_host="h"
    )
    with sqlite_sessions() as session:
        path = session.scalars(select(Instance.path)).one()
    ds = dcmread(path)
    assert ds.SOPInstanceUID == header.sop_instance_uid == received.sop_instance_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == header.sop_instance_uid


def test_leftover_partial_files_of_a_crash_are_removed(
    tmp_path: Path, sqlite_sessions: Any
) -> None:
    store = InstanceStore(tmp_path / "instances", sqlite_sessions, min_free_bytes=0)
    incoming = tmp_path / "instances" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "abc.part").write_bytes(b"half an instance")
    (incoming / "keep.txt").write_bytes(b"not ours")
    assert store.remove_leftovers() == 1
    assert sorted(p.name for p in incoming.iterdir()) == ["keep.txt"]


def test_the_decay_values_are_recorded_with_the_row_as_a_file_read_would_give_them(
    tmp_path: Path, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 13: the Validator takes them from the row instead of reading every file again.
    good, bad, none = make_pet_series(slices=3, rows=8, cols=8)
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    bad.DecayFactor = "1e999"  # not finite: judged by the Validator, never a reason to refuse
    del none.DecayFactor, none.FrameReferenceTime
    store = _store(tmp_path / "instances", sessions)
    received = [
        store.store(_encode(ds), extract_instance_header(ds), calling_ae="S", peer_host="h")
        for ds in (good, bad, none)
    ]
    with sessions() as session:
        rows = [session.get(Instance, r.instance_pk) for r in received]
    from_files = read_slice_decays([Path(row.path) for row in rows if row is not None])
    recorded = [
        SliceDecay(row.decay_factor, row.frame_reference_time) for row in rows if row is not None
    ]
    assert all(row is not None and row.decay_recorded for row in rows)
    assert recorded == from_files
    assert recorded[0].decay_factor is not None and recorded[0].frame_reference_ms is not None
    assert recorded[1].decay_factor is None and recorded[2] == SliceDecay(None, None)


def test_slices_stored_before_the_values_were_recorded_are_read_from_their_files(
    tmp_path: Path,
) -> None:
    [ds] = make_pet_series(slices=1, rows=8, cols=8)
    path = tmp_path / "old.dcm"
    path.write_bytes(_encode(ds))
    missing = tmp_path / "never-read.dcm"  # a recorded slice's file is not opened
    slices = [
        RecordedDecay(missing, True, 1.5, 2000.0),
        RecordedDecay(path, False, None, None),
    ]
    assert recorded_slice_decays(slices) == [
        SliceDecay(1.5, 2000.0),
        *read_slice_decays([path]),
    ]
    assert recorded_slice_decays(slices)[1].decay_factor is not None
