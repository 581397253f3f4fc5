"""Pydantic schemas of the HTTP API: separate create, update and public shapes per resource.

The console's forms and the CLI validate with the same create/update schemas, so a rule lives
in one place (in the core, which the API, the console and the CLI all import).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from petray.dicom.hostnames import validate_host
from petray.dicom.stow_device import auth_label, validate_basic, validate_stow_url, validate_token
from petray.dicom.vr import LO_MAX_LENGTH, ae_title
from petray.errors import ConfigurationError
from petray.imaging.filters import FILTER_MODES, IS_MAX
from petray.site.users import (
    MIN_PASSWORD_LENGTH,
    NAME_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    Role,
    check_password_policy,
    validate_user_name,
)

TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _http_url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("http://", "https://")) or len(value) < 10 or " " in value:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- callback and health -------------------------------------------------------------------


class ProcessReady(BaseModel):
    task_id: str = Field(pattern=TASK_ID_PATTERN)


class Acknowledge(BaseModel):
    message: Literal["Acknowledge"] = "Acknowledge"


class HealthCheck(BaseModel):
    """One judged fact: ``fail`` makes the gateway ``down``, ``warn`` makes it ``degraded``."""

    kind: Literal["database", "dicom_listener", "actor", "disk", "remote_service", "destination"]
    name: str
    verdict: Literal["ok", "warn", "fail", "unknown"]
    reason: str
    since: datetime | None = None


class ActorHealth(BaseModel):
    name: str
    alive: bool
    responding: bool
    restarts: int | None = Field(description="restarts since creation; null when unknown")


class DiskHealth(BaseModel):
    free_mb: int | None = Field(description="null when the file system did not answer in time")
    min_free_mb: int


class RemoteHealth(BaseModel):
    reachable: bool
    latency_ms: float | None
    error: str


class DestinationHealth(BaseModel):
    name: str
    state: Literal["ok", "failing", "unknown"]
    at: datetime | None = Field(description="when the newest delivery outcome was recorded")
    since: datetime | None = Field(description="failing: first failure of the current run")
    reason: str


class Health(BaseModel):
    """``GET /api/v1/health``: 200 when ok or degraded, 503 when down (issue 8 item 9).

    Anonymous (load balancers and probes call it), so it names actors and destinations but
    carries no patient data and no addresses beyond what delivery errors state.
    """

    status: Literal["ok", "degraded", "down"]
    version: str
    database: bool
    dicom_listener: bool | None = Field(description="null when the Store SCP did not answer")
    actors: list[ActorHealth]
    disk: DiskHealth
    remote: RemoteHealth
    destinations: list[DestinationHealth]
    checks: list[HealthCheck]


class Message(BaseModel):
    detail: str


# --- tasks ---------------------------------------------------------------------------------


class DestinationProgress(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    state: str
    sent: int
    total: int
    reason: str


class TaskPublic(BaseModel):
    id: str
    stage: str
    state: str
    images: int
    expected_images: int | None
    sender: str
    peer_host: str
    reason: str
    created: datetime
    updated: datetime
    series_description: str
    patient_name: str | None = Field(None, description="null for viewers")
    patient_id: str | None = Field(None, description="null for viewers")
    accession_number: str | None = Field(None, description="null for viewers")
    study_date: str = Field("", description="StudyDate as received (DICOM DA, YYYYMMDD)")


class TaskList(BaseModel):
    items: list[TaskPublic]
    total: int
    page: int
    page_size: int


class TaskEventPublic(BaseModel):
    stage: str
    state: str
    message: str
    at: datetime


class OutputSeriesPublic(BaseModel):
    id: int
    series_instance_uid: str
    series_number: int
    description: str
    instances: int


class TaskDetail(TaskPublic):
    attempts: int = Field(description="retries asked for by an operator")
    retry_attempts: int = Field(description="automatic attempts in the current stage (issue 8)")
    last_error: str
    next_attempt_at: datetime | None = Field(description="when the next automatic attempt runs")
    notes: list[str] = Field(description="what staff should know that did not stop the task")
    radiopharmaceutical: str
    events: list[TaskEventPublic]
    destinations: list[DestinationProgress]
    outputs: list[OutputSeriesPublic]
    files_purged_at: datetime | None = Field(
        None, description="when retention removed the task's files (issue 10); the row stays"
    )
    quant: dict[str, Any] | None = Field(
        None,
        description="the quantitative check (issue 15): suv_factor, suv_reason, "
        "body_threshold_bqml, received and series metrics with change_pct, and check "
        "(status: pending, off, passed, held, released or rejected; breaches; thresholds)",
    )


class TaskAction(BaseModel):
    id: str
    stage: str
    state: str


class TaskReject(Strict):
    reason: str = Field("", max_length=200, description="why, added to the failure reason")


class BulkTaskAction(Strict):
    action: Literal["retry", "cancel", "delete"]
    ids: list[Annotated[str, Field(pattern=TASK_ID_PATTERN)]] = Field(min_length=1, max_length=500)


class BulkOutcome(BaseModel):
    id: str
    ok: bool
    detail: str = Field(description="the new stage/state, or why the task was skipped")


class BulkResult(BaseModel):
    action: str
    done: int
    skipped: int
    outcomes: list[BulkOutcome]


# --- devices -------------------------------------------------------------------------------


class DeviceCreate(Strict):
    """A DICOM device (AE title, host, port) or a DICOMweb destination (stow_url), not both."""

    name: str = Field(min_length=1, max_length=64)
    ae_title: str | None = None
    host: str | None = Field(
        None, min_length=1, max_length=255, description="host name or IP address"
    )
    port: int | None = Field(None, ge=1, le=65535)
    is_source: bool = False
    is_destination: bool = False
    tls: bool = Field(False, description="send to this destination over DICOM TLS")
    tls_ca: str = Field("", max_length=4096, description="CA file on the gateway to verify it")
    tls_cert: str = Field("", max_length=4096, description="client certificate file, if asked")
    tls_key: str = Field("", max_length=4096, description="key file of the client certificate")
    match_ae_only: bool = Field(
        False, description="as a source, accept its AE title from any address (issue 9)"
    )
    stow_url: str | None = Field(
        None, description="a DICOMweb destination (issue 15): STOW-RS base URL, http(s)://"
    )
    stow_token: str = Field("", max_length=4096, description="STOW-RS bearer token (write-only)")
    stow_basic: str = Field("", max_length=512, description="STOW-RS user:password (write-only)")

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return None if value is None else ae_title(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        return None if value is None else validate_host(value)

    @field_validator("stow_url")
    @classmethod
    def _check_stow_url(cls, value: str | None) -> str | None:
        return None if value is None else validate_stow_url(value)

    @field_validator("stow_token")
    @classmethod
    def _check_token(cls, value: str) -> str:
        return validate_token(value)

    @field_validator("stow_basic")
    @classmethod
    def _check_basic(cls, value: str) -> str:
        return validate_basic(value)

    @model_validator(mode="after")
    def _some_role(self) -> DeviceCreate:
        if self.stow_url is not None:
            _check_stow_device(self)
            return self
        if self.stow_token or self.stow_basic:
            raise ValueError("stow_token and stow_basic are for a STOW-RS device (stow_url)")
        missing = [n for n in ("ae_title", "host", "port") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"a DICOM device needs {', '.join(missing)} (or a STOW-RS URL)")
        if not (self.is_source or self.is_destination):
            raise ValueError("a device must be a source, a destination or both")
        if bool(self.tls_cert.strip()) != bool(self.tls_key.strip()):
            raise ValueError("a TLS client certificate needs its key, and a key its cert")
        return self


def _check_stow_device(body: DeviceCreate) -> None:
    given = [n for n in ("ae_title", "host", "port") if getattr(body, n) is not None]
    if given:
        raise ValueError(f"a STOW-RS device has no {', '.join(given)}: give stow_url alone")
    if body.is_source:
        raise ValueError("a STOW-RS device is a destination only: it cannot send to petray")
    if body.stow_token and body.stow_basic:
        raise ValueError("give a STOW-RS token or user:password, not both")


class DeviceUpdate(Strict):
    name: str | None = Field(None, min_length=1, max_length=64)
    ae_title: str | None = None
    host: str | None = Field(None, min_length=1, max_length=255)
    port: int | None = Field(None, ge=1, le=65535)
    is_source: bool | None = None
    is_destination: bool | None = None
    tls: bool | None = None
    tls_ca: str | None = Field(None, max_length=4096)
    tls_cert: str | None = Field(None, max_length=4096)
    tls_key: str | None = Field(None, max_length=4096)
    match_ae_only: bool | None = None
    # Issue 15. "" for stow_url turns a STOW-RS device back into a DICOM one (with ae_title,
    # host and port); a token or user:password replaces the credentials, "" removes them.
    stow_url: str | None = None
    stow_token: str | None = Field(None, max_length=4096)
    stow_basic: str | None = Field(None, max_length=512)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return None if value is None else ae_title(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        return None if value is None else validate_host(value)

    @field_validator("stow_url")
    @classmethod
    def _check_stow_url(cls, value: str | None) -> str | None:
        return value if not value else validate_stow_url(value)

    @field_validator("stow_token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        return None if value is None else validate_token(value)

    @field_validator("stow_basic")
    @classmethod
    def _check_basic(cls, value: str | None) -> str | None:
        return None if value is None else validate_basic(value)


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    ae_title: str
    host: str
    port: int
    is_source: bool
    is_destination: bool
    tls: bool
    tls_ca: str
    tls_cert: str
    tls_key: str
    match_ae_only: bool
    stow_url: str = ""
    # The kind of credentials with the secret masked; the token and password are never sent.
    stow_auth: str = ""

    @model_validator(mode="before")
    @classmethod
    def _mask_credentials(cls, data: Any) -> Any:
        token, basic = getattr(data, "stow_token", None), getattr(data, "stow_basic", None)
        if token is None or not getattr(data, "stow_url", ""):
            return data
        fields = {name: getattr(data, name) for name in cls.model_fields if hasattr(data, name)}
        return {**fields, "stow_auth": auth_label(token, basic or "")}


class EchoResultPublic(BaseModel):
    ok: bool
    status: int | None
    latency_ms: float | None
    message: str


# --- post-filters --------------------------------------------------------------------------


class FilterCreate(Strict):
    description: str = Field(min_length=1, max_length=LO_MAX_LENGTH)
    series_number: int = Field(ge=0, le=IS_MAX)
    fwhm_mm: float = Field(0.0, ge=0, le=100)
    noise_pct: float = Field(0.0, ge=0, le=100)
    mode: Literal["append", "replace"] = "append"
    scanner_model: str = Field("all", min_length=1, max_length=64)
    radiopharmaceutical: str = Field("all", min_length=1, max_length=64)
    enabled: bool = True

    @field_validator("description")
    @classmethod
    def _lo(cls, value: str) -> str:
        if "\\" in value or any(ord(ch) < 0x20 for ch in value):
            raise ValueError("must not contain a backslash or control characters (VR LO)")
        return value

    @field_validator("fwhm_mm", "noise_pct")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class FilterUpdate(Strict):
    description: str | None = Field(None, min_length=1, max_length=LO_MAX_LENGTH)
    series_number: int | None = Field(None, ge=0, le=IS_MAX)
    fwhm_mm: float | None = Field(None, ge=0, le=100)
    noise_pct: float | None = Field(None, ge=0, le=100)
    mode: Literal["append", "replace"] | None = None
    scanner_model: str | None = Field(None, min_length=1, max_length=64)
    radiopharmaceutical: str | None = Field(None, min_length=1, max_length=64)
    enabled: bool | None = None


class FilterPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    description: str
    series_number: int
    fwhm_mm: float
    noise_pct: float
    mode: str
    scanner_model: str
    radiopharmaceutical: str
    enabled: bool


assert set(FILTER_MODES) == {"append", "replace"}  # keep the Literal above in step


# --- radiopharmaceuticals ------------------------------------------------------------------


def _clean_list(values: list[str]) -> list[str]:
    cleaned = [v.strip() for v in values if v.strip()]
    if any(len(v) > 64 for v in cleaned):
        raise ValueError("each entry must have at most 64 characters")
    return cleaned


class RadiopharmaceuticalCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    nuclide: str = Field(min_length=1, max_length=16)
    half_life_s: float = Field(gt=0, le=1e9)
    synonyms: list[str] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)

    @field_validator("synonyms", "codes")
    @classmethod
    def _lists(cls, value: list[str]) -> list[str]:
        return _clean_list(value)


class RadiopharmaceuticalUpdate(Strict):
    name: str | None = Field(None, min_length=1, max_length=64)
    nuclide: str | None = Field(None, min_length=1, max_length=16)
    half_life_s: float | None = Field(None, gt=0, le=1e9)
    synonyms: list[str] | None = None
    codes: list[str] | None = None

    @field_validator("synonyms", "codes")
    @classmethod
    def _lists(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _clean_list(value)


class RadiopharmaceuticalPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    nuclide: str
    half_life_s: float
    synonyms: list[str]
    codes: list[str]


# --- site configuration --------------------------------------------------------------------


CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ClientId = Annotated[
    str,
    Field(
        pattern=CLIENT_ID_PATTERN,
        description="the site id the service licenses: letters, digits, . _ - (1-64)",
    ),
]


class ConfigPublic(BaseModel):
    client_id: str
    ae_title: str
    dicom_port: int
    remote_url: str
    min_images: int
    slice_gap_tolerance: float
    inactivity_wait_s: float
    abort_timeout_s: float
    reply_to_sender: bool
    restrict_sources: bool
    retention_done_days: int
    retention_failed_days: int
    require_patient_weight: bool = Field(
        False, description="refuse a series without PatientWeight (issue 15)"
    )
    quant_max_activity_change_pct: float | None = Field(
        None, description="hold a task whose total activity changes by more (%); null: off"
    )
    quant_max_suvmax_change_pct: float | None = Field(
        None, description="hold a task whose SUVmax changes by more (%); null: off"
    )


class ListenerUpdate(Strict):
    ae_title: str
    dicom_port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return ae_title(value)


class ThresholdsUpdate(Strict):
    min_images: int = Field(ge=1, le=100_000)
    slice_gap_tolerance: float = Field(gt=0, le=100)
    inactivity_wait_s: float = Field(gt=0, le=3600)
    abort_timeout_s: float = Field(gt=0, le=7 * 24 * 3600)
    reply_to_sender: bool = False
    restrict_sources: bool = False


# Issue 10: how long finished tasks keep their files (the task rows are kept regardless).
RetentionDays = Field(ge=1, le=3650)


class RetentionUpdate(Strict):
    retention_done_days: int = RetentionDays
    retention_failed_days: int = RetentionDays


class RemoteUpdate(Strict):
    remote_url: str = Field(min_length=1, max_length=255)

    @field_validator("remote_url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)


class SiteUpdate(Strict):
    client_id: ClientId


# Issue 15: the quantitative check's alarm limits, percent change against the received series;
# null turns a limit off.
QuantLimit = Field(None, gt=0, le=1000)


class QuantUpdate(Strict):
    quant_max_activity_change_pct: float | None = QuantLimit
    quant_max_suvmax_change_pct: float | None = QuantLimit
    require_patient_weight: bool = False


class ConfigUpdate(Strict):
    client_id: ClientId | None = None
    ae_title: str | None = None
    dicom_port: int | None = Field(None, ge=1, le=65535)
    remote_url: str | None = None
    min_images: int | None = Field(None, ge=1, le=100_000)
    slice_gap_tolerance: float | None = Field(None, gt=0, le=100)
    inactivity_wait_s: float | None = Field(None, gt=0, le=3600)
    abort_timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    reply_to_sender: bool | None = None
    restrict_sources: bool | None = None
    retention_done_days: int | None = Field(None, ge=1, le=3650)
    retention_failed_days: int | None = Field(None, ge=1, le=3650)
    require_patient_weight: bool | None = None
    quant_max_activity_change_pct: float | None = QuantLimit
    quant_max_suvmax_change_pct: float | None = QuantLimit

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return None if value is None else ae_title(value)

    @field_validator("remote_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)


class RemoteTestPublic(BaseModel):
    ok: bool
    url: str
    latency_ms: float | None
    message: str


# --- users --------------------------------------------------------------------------------

Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=PASSWORD_MAX_LENGTH)]


class WithPassword(BaseModel):
    # Not stripped: leading or trailing spaces are part of a password, as at login.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @field_validator("password", check_fields=False)
    @classmethod
    def _policy(cls, value: str, info: ValidationInfo) -> str:
        # The user name is validated first (field order), so the form shows the rule at once.
        try:
            check_password_policy(value, user_name=str(info.data.get("name") or ""))
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value


class UserCreate(WithPassword):
    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH)
    role: Role
    password: Password

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_user_name(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None


class UserRoleUpdate(Strict):
    role: Role


class PasswordReset(WithPassword):
    password: Password


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    role: Role
    created: datetime
    failed_logins: int
    locked_until: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def locked(self) -> bool:
        """Logins are refused until ``locked_until`` (lockout after repeated failures)."""
        return self.locked_until is not None and self.locked_until > datetime.now(UTC)


# --- activity, metrics, tokens -------------------------------------------------------------


class ActivityPublic(BaseModel):
    at: datetime
    kind: str
    who: str
    what: str
    instances: int | None
    outcome: str
    task_id: str


class ActorPublic(BaseModel):
    name: str
    alive: bool
    responding: bool = True
    restarts: int | None = None
    backlog: int
    processed: int
    failed: int


class MetricsSummary(BaseModel):
    tasks_by_state: dict[str, int]
    actors: list[ActorPublic]
    free_disk_mb: int
    min_free_disk_mb: int


class TokenCreate(Strict):
    label: str = Field("", max_length=64)


class TokenCreated(BaseModel):
    id: int
    label: str
    token: str = Field(description="shown once; store it now")
