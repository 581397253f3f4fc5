"""Durable storage of received instances: the file and its database rows, before the SCP answers.

This is the ingest hot path, so it never decodes pixel data and keeps one engine for the process;
patient/study/series rows are resolved once per series and cached.

Durability: the file is fsynced and the row committed before ``store`` returns, and the row is
committed only once the file is durable, so a crash never leaves a row without its file. The
fsync is the slowest step of ingest, so the SCP writes the file under a temporary name as soon
as the bytes arrive (``begin``) and hands its fsync to a writer thread while it checks the
header; once the file is durable its row is inserted, the file renamed into its series directory
and the row committed, a transaction short enough for concurrent associations to share
SQLite's one write lock.
The rename itself is not followed by a directory fsync: like the SQLite WAL with
synchronous=NORMAL it survives a process crash, and a power loss may lose the last renames along
with the last commits.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Instance, Patient, Series, Study
from petray.dicom.header import InstanceHeader
from petray.dicom.uids import validate_uid
from petray.errors import TransientError
from petray.imaging.volume import StoredSlice

logger = logging.getLogger(__name__)

# Parts of one DICOM file (preamble, file meta, dataset), written with one writev, no join copy.
FileParts = Sequence[bytes | bytearray | memoryview]
# Concurrent fsyncs in flight; more associations than this just wait their turn for a writer.
FSYNC_WRITERS = 8
INCOMING_DIR = ".incoming"


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
    # Only for the bytes-received metric; not part of what identifies the message.
    size_bytes: int = field(default=0, compare=False)
    # The stored file, for the volume the Compilator builds on arrival (issue 13).
    path: str = field(default="", compare=False)
    # Where its pixel values lie in that file, and their geometry: the volume is then built
    # without parsing the file again (None: the builder reads it with pydicom).
    stored: StoredSlice | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PendingFile:
    """A received file being written under a temporary name, not yet named or recorded."""

    temporary: Path
    written: Future[None]


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
        incoming: str = INCOMING_DIR,
    ) -> None:
        """``incoming``: where this process's partial files go; processes sharing ``root``
        each have their own, so one that starts cleans only its own leftovers."""
        self._root = root
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._min_free_bytes = min_free_bytes
        self._fsync = fsync
        self._series_pks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._writers: ThreadPoolExecutor | None = None
        # Temporary files start here, before their UIDs are validated: names are random.
        self._incoming = root / incoming
        self._incoming_ready = False
        # Unique file names without a getrandom() call per file: one random prefix per store
        # (processes sharing a root never collide) and a counter.
        self._name_prefix = os.urandom(6).hex()
        self._name_counter = itertools.count()
        self._insert = insert(Instance).returning(Instance.id)

    def remove_leftovers(self) -> int:
        """Delete temporary files a crashed process left behind; returns how many.

        Each belongs to an instance that was never acknowledged, so its sender sends it again.
        Call only while no association is being served by this root.
        """
        removed = 0
        for leftover in self._incoming.glob("*.part") if self._incoming.is_dir() else ():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def check_free_space(self) -> None:
        free = shutil.disk_usage(self._root).free
        if free < self._min_free_bytes:
            raise DiskFull(
                f"free disk {free // 2**20} MiB is under the floor "
                f"{self._min_free_bytes // 2**20} MiB"
            )

    def begin(self, parts: FileParts) -> PendingFile:
        """Start writing a received file durably, before its header is even checked.

        Refuses (DiskFull) before writing anything. The caller must pass the result to ``store``
        or to ``discard``.
        """
        self.check_free_space()
        if not self._incoming_ready:
            self._incoming.mkdir(parents=True, exist_ok=True)
            self._incoming_ready = True
        temporary = self._incoming / f"{self._unique()}.part"
        return PendingFile(temporary, self._start_write(parts, temporary))

    def discard(self, pending: PendingFile) -> None:
        """Remove a file started with ``begin`` that will not be stored."""
        _settle(pending.written)
        pending.temporary.unlink(missing_ok=True)

    def store(
        self,
        encoded: bytes | FileParts | PendingFile,
        header: InstanceHeader,
        *,
        calling_ae: str,
        peer_host: str,
        stored: StoredSlice | None = None,
    ) -> ReceivedInstance:
        """Name and record a file (bytes, parts, or started with ``begin``), durable on return.
        ``stored`` (what the SCP learnt of its pixels) travels on to the Compilator.

        On any failure nothing is left behind: neither the file nor its row.
        """
        if isinstance(encoded, PendingFile):
            pending = encoded
        else:
            pending = self.begin((encoded,) if isinstance(encoded, bytes) else encoded)
        final: Path | None = None
        try:
            final = self._final_path(header)
            series_pk = self._series_pk(header)
            # The row must never be visible without its file, and SQLite has one write lock for
            # the whole database that an insert holds until its commit: the file is made durable
            # first, so that no other association (nor the Compilator) waits out this fsync.
            pending.written.result()
            # One prebuilt Core statement on a bare connection: building the statement or an ORM
            # session per instance cost more than the insert. Closing the connection without
            # its commit rolls the insert back.
            with self._engine.connect() as connection:
                instance_pk = connection.execute(
                    self._insert,
                    {
                        "series_pk": series_pk,
                        "sop_instance_uid": header.sop_instance_uid,
                        "path": str(final),
                        "calling_ae": calling_ae,
                        "peer_host": peer_host,
                        "instance_number": header.instance_number,
                        "slice_position": header.slice_position,
                        "slice_thickness": header.slice_thickness,
                        "number_of_slices": header.number_of_slices,
                        "decay_recorded": True,
                        "decay_factor": header.decay_factor,
                        "frame_reference_time": header.frame_reference_time,
                    },
                ).scalar_one()
                os.replace(pending.temporary, final)
                connection.commit()
        except BaseException:
            self.discard(pending)
            if final is not None:
                final.unlink(missing_ok=True)
            raise
        return ReceivedInstance(
            instance_pk=instance_pk,
            series_pk=series_pk,
            sop_instance_uid=header.sop_instance_uid,
            slice_position=header.slice_position,
            number_of_slices=header.number_of_slices,
            calling_ae=calling_ae,
            peer_host=peer_host,
            size_bytes=final.stat().st_size,
            path=str(final),
            stored=stored,
        )

    def _final_path(self, header: InstanceHeader) -> Path:
        """Where an instance file is kept; its series directory exists."""
        # Names come from validated UIDs only, never from patient fields (ARCHITECTURE.md).
        series_dir = self._root / validate_uid(header.series_instance_uid)
        # A repeated SOP Instance UID is kept as its own file: it belongs to another task.
        name = f"{validate_uid(header.sop_instance_uid)}.{self._unique()}.dcm"
        if series_dir not in self._known_dirs:
            series_dir.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(series_dir)
        return series_dir / name

    def _unique(self) -> str:
        return f"{self._name_prefix}{next(self._name_counter):x}"

    def _start_write(self, parts: FileParts, temporary: Path) -> Future[None]:
        # The bytes go to the page cache here, in the caller's thread: a few system calls that
        # release the GIL. Only the fsync is handed to a writer thread, as one call: a writer
        # thread running Python code would wait for the GIL (up to the 5 ms switch interval)
        # while the caller parses the header, and the fsync would start too late to overlap.
        try:
            fd = _write_file(parts, temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if not self._fsync:
            os.close(fd)
            done: Future[None] = Future()
            done.set_result(None)
            return done
        if self._writers is None:
            with self._lock:
                if self._writers is None:
                    self._writers = ThreadPoolExecutor(
                        max_workers=FSYNC_WRITERS, thread_name_prefix="petray-fsync"
                    )
        try:
            synced = self._writers.submit(_sync_and_close, fd)
        except BaseException:
            os.close(fd)
            raise
        # Yield the GIL once so that the writer thread takes the job and enters fsync now.
        time.sleep(0)
        return synced

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


def _write_file(parts: FileParts, temporary: Path) -> int:
    """Write ``parts`` to a new file; returns its open descriptor (the caller closes it)."""
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        views = [memoryview(part) for part in parts]
        while views:
            written = os.writev(fd, views)
            # A short write leaves the rest to the next call (large files, signals).
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle(written: Future[None]) -> None:
    """Wait for a file write to finish, whatever its outcome, so its files can be removed."""
    try:
        written.result()
    except BaseException:  # the caller is already raising the error that matters
        logger.debug("instance file write failed after another failure", exc_info=True)


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
