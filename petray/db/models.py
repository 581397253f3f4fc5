"""SQLAlchemy 2 typed models: the database is the pipeline's source of truth.

Schema changes go through Alembic (``petray/db/migrations``); keep both in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID_LENGTH = 64  # PS3.5 9.1
AE_LENGTH = 16


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on every database.

    SQLite keeps no zone and hands back naive values, which ``.timestamp()`` would read as local
    time; normalising here spares every caller from patching that up.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class Patient(Base):
    __tablename__ = "patient"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "study"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    model_name: Mapped[str] = mapped_column(String(64), default="")
    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    """One received file. A SOP Instance UID may repeat (re-sends): each copy is its own row."""

    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_unassigned", "task_id", "series_pk"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    task_id: Mapped[str | None] = mapped_column(
        ForeignKey("task.id", ondelete="SET NULL"), nullable=True, index=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), index=True)
    path: Mapped[str] = mapped_column(Text)
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH), default="")
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slice_position: Mapped[float] = mapped_column(Float)
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)
    number_of_slices: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # DecayFactor and FrameReferenceTime as the SCP read them (issue 13); rows stored before
    # they were recorded have decay_recorded false, and their files are read instead.
    decay_recorded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    decay_factor: Mapped[float | None] = mapped_column(Float, nullable=True)
    frame_reference_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    received: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """One PET series from one sender on its way through the pipeline (issue 2)."""

    __tablename__ = "task"
    __table_args__ = (Index("ix_task_stage_state", "stage", "state"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH), default="")
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    stage: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    images: Mapped[int] = mapped_column(Integer, default=0)
    expected_images: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Operator retries (``petray.tasks.retry``); automatic retries are counted apart below.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The current run of transient failures in this stage (issue 8: retries end): how many,
    # since when, when the next attempt is due, and the last error. Reset when the stage moves.
    retry_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retrying_since: Mapped[datetime | None] = mapped_column(nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Things a technologist should know that did not stop the task (e.g. a NumberOfSlices
    # contradicted by the slices received), one per line.
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    # When retention removed the task's files (instances, work archives, outputs).
    files_purged_at: Mapped[datetime | None] = mapped_column(nullable=True)
    date_shift_days: Mapped[int] = mapped_column(Integer, default=0)
    radiopharmaceutical: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    deadline: Mapped[datetime | None] = mapped_column(nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    series: Mapped[Series] = relationship()
    events: Mapped[list[TaskEvent]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="TaskEvent.id"
    )
    destinations: Mapped[list[TaskDestination]] = relationship(
        back_populates="task", cascade="all, delete-orphan"
    )
    outputs: Mapped[list[OutputSeries]] = relationship(
        back_populates="task", cascade="all, delete-orphan"
    )


class TaskEvent(Base):
    """A stage transition, for the timeline and per-stage timings."""

    __tablename__ = "task_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)
    task: Mapped[Task] = relationship(back_populates="events")


class Device(Base):
    """A remote DICOM application entity: a source (may send to us) and/or a destination."""

    __tablename__ = "device"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    is_source: Mapped[bool] = mapped_column(Boolean, default=False)
    is_destination: Mapped[bool] = mapped_column(Boolean, default=False)
    # DICOM over TLS to this destination (PS3.15 B.1): CA file to verify it, and optionally a
    # client certificate and key when it requires one. Paths on the gateway, never the PEMs.
    tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    tls_ca: Mapped[str] = mapped_column(Text, default="", server_default="")
    tls_cert: Mapped[str] = mapped_column(Text, default="", server_default="")
    tls_key: Mapped[str] = mapped_column(Text, default="", server_default="")
    # A source matched on its AE title alone, from any address (issue 9): for a sender whose
    # address changes (DHCP, a cluster of modality workstations). Off, the host must match too.
    match_ae_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A destination reached over DICOMweb STOW-RS (issue 15) rather than C-STORE: the service
    # URL, and a bearer token or "user:password" for HTTP Basic. Empty: a DIMSE device.
    stow_url: Mapped[str] = mapped_column(Text, default="", server_default="")
    stow_token: Mapped[str] = mapped_column(Text, default="", server_default="")
    stow_basic: Mapped[str] = mapped_column(Text, default="", server_default="")


class TaskDestination(Base):
    """Delivery progress of one task to one destination (issue 4)."""

    __tablename__ = "task_destination"
    __table_args__ = (UniqueConstraint("task_id", "ae_title", "host", "port"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    sent: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    # Set for a STOW-RS destination (issue 15); empty for C-STORE.
    stow_url: Mapped[str] = mapped_column(Text, default="", server_default="")
    task: Mapped[Task] = relationship(back_populates="destinations")


class SentInstance(Base):
    """An output instance acknowledged by a destination: what makes resumption duplicate-free."""

    __tablename__ = "sent_instance"
    __table_args__ = (UniqueConstraint("destination_pk", "sop_instance_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    destination_pk: Mapped[int] = mapped_column(
        ForeignKey("task_destination.id", ondelete="CASCADE"), index=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))


class OutputSeries(Base):
    __tablename__ = "output_series"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    filter_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_number: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(64))
    directory: Mapped[str] = mapped_column(Text)
    instances: Mapped[int] = mapped_column(Integer)
    task: Mapped[Task] = relationship(back_populates="outputs")


class SiteConfig(Base):
    """Run-time site configuration, one row (id 1); edited in the console or REST API."""

    __tablename__ = "site_config"
    id: Mapped[int] = mapped_column(primary_key=True)
    min_images: Mapped[int] = mapped_column(Integer, default=10)
    slice_gap_tolerance: Mapped[float] = mapped_column(Float, default=1.5)
    inactivity_wait_s: Mapped[float] = mapped_column(Float, default=5.0)
    abort_timeout_s: Mapped[float] = mapped_column(Float, default=600.0)
    reply_to_sender: Mapped[bool] = mapped_column(Boolean, default=False)
    restrict_sources: Mapped[bool] = mapped_column(Boolean, default=False)
    # Overrides of the process settings that staff may change at run time (issue 5).
    ae_title: Mapped[str | None] = mapped_column(String(AE_LENGTH), nullable=True)
    dicom_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The site id sent to the service (issue 11); null: PETRAY_CLIENT_ID.
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Retention (issue 10): files of done tasks go after this many days, of failed ones after
    # the second; the task rows stay as history.
    retention_done_days: Mapped[int] = mapped_column(Integer, default=7, server_default="7")
    retention_failed_days: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    # Issue 15: refuse a series without PatientWeight (off: process it, SUV not computed).
    require_patient_weight: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # The quantitative check's alarm, in percent change against the received series; a task
    # beyond either is held for review. Null turns that check off.
    quant_max_activity_change_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    quant_max_suvmax_change_pct: Mapped[float | None] = mapped_column(Float, nullable=True)


class Radiopharmaceutical(Base):
    __tablename__ = "radiopharmaceutical"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    nuclide: Mapped[str] = mapped_column(String(16))
    half_life_s: Mapped[float] = mapped_column(Float)
    synonyms: Mapped[list[str]] = mapped_column(JSON, default=list)
    codes: Mapped[list[str]] = mapped_column(JSON, default=list)


class PostFilter(Base):
    """A Gaussian post-filter; one output series per enabled, matching filter (issue 4)."""

    __tablename__ = "post_filter"
    id: Mapped[int] = mapped_column(primary_key=True)
    description: Mapped[str] = mapped_column(String(64))
    series_number: Mapped[int] = mapped_column(Integer)
    fwhm_mm: Mapped[float] = mapped_column(Float, default=0.0)
    noise_pct: Mapped[float] = mapped_column(Float, default=0.0)
    mode: Mapped[str] = mapped_column(String(8), default="append")
    scanner_model: Mapped[str] = mapped_column(String(64), default="all")
    radiopharmaceutical: Mapped[str] = mapped_column(String(64), default="all")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class AssociationLog(Base):
    """One DICOM association, for the activity log (issue 5)."""

    __tablename__ = "association_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), default="in")
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH), default="")
    called_ae: Mapped[str] = mapped_column(String(AE_LENGTH), default="")
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    started: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    ended: Mapped[datetime | None] = mapped_column(nullable=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(255), default="")


class AuditEvent(Base):
    """One state change made by a person, a token, a peer or the gateway (issue 10).

    Append-only: nothing updates or deletes these rows. No patient data: targets are ids,
    names of devices/filters/users, AE titles and addresses.
    """

    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(String(255), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255), default="")
    outcome: Mapped[str] = mapped_column(String(32), default="ok")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class User(Base):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)
