"""Durable storage of received instances: the file and its database rows, before the SCP answers.

This is the ingest hot path, so it never decodes pixel data and keeps one engine for the process;
patient/study/series rows are resolved once per series and cached.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Instance, Patient, Series, Study
from petray.dicom.header import InstanceHeader
from petray.dicom.uids import validate_uid
from petray.errors import TransientError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    """The small message the SCP sends the Compilator for each stored instance."""

    instance_pk: int
    series_pk: int
    sop_instance_uid: str
    slice_position: float
    number_of_slices: int | None
    calling_ae: str
    peer_host: str


class DiskFull(TransientError):
    """Free disk space is under the configured floor; the sender should retry later."""


class InstanceStore:
    """Writes instance files under ``root`` and their rows through ``sessions``."""

    def __init__(
        self,
        root: Path,
        sessions: sessionmaker[Session],
        *,
        min_free_bytes: int,
        fsync: bool = True,
    ) -> None:
        self._root = root
        self._sessions = sessions
        self._min_free_bytes = min_free_bytes
        self._fsync = fsync
        self._series_pks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._known_dirs: set[Path] = set()

    def check_free_space(self) -> None:
        free = shutil.disk_usage(self._root).free
        if free < self._min_free_bytes:
            raise DiskFull(
                f"free disk {free // 2**20} MiB is under the floor "
                f"{self._min_free_bytes // 2**20} MiB"
            )

    def store(
        self, encoded: bytes, header: InstanceHeader, *, calling_ae: str, peer_host: str
    ) -> ReceivedInstance:
        self.check_free_space()
        path = self._write_file(encoded, header)
        try:
            series_pk = self._series_pk(header)
            with unit_of_work(self._sessions) as session:
                row = Instance(
                    series_pk=series_pk,
                    sop_instance_uid=header.sop_instance_uid,
                    path=str(path),
                    calling_ae=calling_ae,
                    peer_host=peer_host,
                    instance_number=header.instance_number,
                    slice_position=header.slice_position,
                    slice_thickness=header.slice_thickness,
                    number_of_slices=header.number_of_slices,
                )
                session.add(row)
                session.flush()
                instance_pk = row.id
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return ReceivedInstance(
            instance_pk=instance_pk,
            series_pk=series_pk,
            sop_instance_uid=header.sop_instance_uid,
            slice_position=header.slice_position,
            number_of_slices=header.number_of_slices,
            calling_ae=calling_ae,
            peer_host=peer_host,
        )

    def _write_file(self, encoded: bytes, header: InstanceHeader) -> Path:
        # Names come from validated UIDs only, never from patient fields (ARCHITECTURE.md).
        series_dir = self._root / validate_uid(header.series_instance_uid)
        if series_dir not in self._known_dirs:
            series_dir.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(series_dir)
        # A repeated SOP Instance UID is kept as its own file: it belongs to another task.
        name = f"{validate_uid(header.sop_instance_uid)}.{uuid.uuid4().hex[:12]}.dcm"
        final = series_dir / name
        temporary = series_dir / f".{name}.part"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(encoded)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        return final

    def _series_pk(self, header: InstanceHeader) -> int:
        cached = self._series_pks.get(header.series_instance_uid)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._series_pks.get(header.series_instance_uid)
            if cached is not None:
                return cached
            for attempt in range(2):
                try:
                    with unit_of_work(self._sessions) as session:
                        series_pk = upsert_hierarchy(header, session=session)
                    break
                except IntegrityError:
                    # Another process inserted the same patient/study first; read it back.
                    if attempt:
                        raise
            self._series_pks[header.series_instance_uid] = series_pk
            return series_pk


def upsert_hierarchy(header: InstanceHeader, *, session: Session) -> int:
    """Create or update the patient, study and series rows of an instance; returns the series pk."""
    patient = session.scalar(select(Patient).where(Patient.patient_id == header.patient_id))
    if patient is None:
        patient = Patient(patient_id=header.patient_id)
        session.add(patient)
    patient.name = header.patient_name
    patient.birth_date = header.patient_birth_date
    patient.sex = header.patient_sex
    session.flush()

    study = session.scalar(
        select(Study).where(Study.study_instance_uid == header.study_instance_uid)
    )
    if study is None:
        study = Study(study_instance_uid=header.study_instance_uid, patient_pk=patient.id)
        session.add(study)
    study.study_date = header.study_date
    study.accession_number = header.accession_number
    study.description = header.study_description
    session.flush()

    series = session.scalar(
        select(Series).where(Series.series_instance_uid == header.series_instance_uid)
    )
    if series is None:
        series = Series(series_instance_uid=header.series_instance_uid, study_pk=study.id)
        session.add(series)
    series.modality = header.modality
    series.description = header.series_description
    series.series_number = header.series_number
    series.manufacturer = header.manufacturer
    series.model_name = header.model_name
    session.flush()
    return series.id
