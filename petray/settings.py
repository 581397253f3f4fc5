"""Process settings: ports, paths, URLs and secrets, read once from ``PETRAY_*`` variables.

Site configuration that staff change at run time (devices, filters, thresholds) lives in the
database instead; see ``petray.db.models.SiteConfig``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from petray.dicom.vr import ae_title
from petray.errors import ConfigurationError


class Settings(BaseSettings):
    """Everything a petray process needs to start; validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="PETRAY_", env_file=None, extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".petray")
    database_url: str | None = None
    ae_title: str = "PETRAY"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    dicom_bind: str = "127.0.0.1"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    shared_dir: Path | None = None
    remote_url: str = "http://127.0.0.1:8100"
    remote_token: str = "petray-dev-remote-token"
    remote_timeout_s: float = Field(default=10.0, gt=0)
    callback_token: str = "petray-dev-callback-token"
    callback_url: str | None = None
    client_id: str = "petray-site"
    uid_root: str = "1.2.826.0.1.3680043.10.1299"
    min_free_disk_mb: int = Field(default=512, ge=0)
    # Copies of the audit trail (issue 10): "host:port" (UDP) or a socket path such as /dev/log.
    audit_syslog: str | None = None
    # How often the gateway applies the retention policy (issue 10).
    retention_interval_s: float = Field(default=3600.0, gt=0)
    max_result_bytes: int = Field(default=8 * 1024**3, gt=0)
    zip_compression_level: int = Field(default=1, ge=0, le=9)
    processing_deadline_s: float = Field(default=6 * 3600, gt=0)
    filter_workers: int = Field(default=2, ge=1)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_cap_s: float = Field(default=60.0, gt=0)
    # How long a stage keeps retrying a transient failure before the task fails with the last
    # error (issue 8: retries end). The service and the shared folder get hours (a VPN or
    # service outage); a destination gets a day (a PACS down over a weekend night).
    service_retry_budget_s: float = Field(default=6 * 3600, gt=0)
    delivery_retry_budget_s: float = Field(default=24 * 3600, gt=0)
    # How often actors sweep the database for work nobody announced (unassigned instances,
    # results in processed/ whose callback was lost).
    sweep_interval_s: float = Field(default=30.0, gt=0)
    fsync: bool = True
    dashboard: bool = True
    secret_key: str | None = None
    production: bool = False
    # Hostile input (issue 9) and association slots (issue 8): what the Store SCP refuses.
    # The largest instance accepted, after inflating a deflated one: a 1024x1024 32-bit PET
    # slice is 4 MiB, so 64 MiB leaves room for any real header; each association may hold one.
    max_instance_bytes: int = Field(default=64 * 2**20, ge=2**20)
    # Rows and Columns above this are refused at ingest (PET matrices are 128-1024).
    max_image_dimension: int = Field(default=4096, ge=16, le=65535)
    dicom_max_associations: int = Field(default=32, ge=1, le=1024)
    # Store SCP processes sharing the DICOM port (SO_REUSEPORT; issue 13): the kernel spreads
    # associations over them, so simultaneous senders use every core. Together they accept
    # dicom_max_associations at most.
    dicom_processes: int = Field(default=2, ge=1, le=16)
    # Memory the Store SCP may hold in received instances at once; start-up refuses
    # dicom_max_associations x max_instance_bytes above it.
    dicom_memory_budget_mb: int = Field(default=4096, ge=64)
    # Memory the Compilator may hold in series volumes it builds while their slices arrive
    # (issue 13; a 645x440x440 series takes 500 MiB). A series beyond it is read from its
    # files by the Packer instead; 0 turns building on arrival off. The handover copies one
    # volume into the object store, so the Compilator peaks at this plus one volume.
    prebuild_memory_mb: int = Field(default=768, ge=0)
    # A connection that sends no A-ASSOCIATE-RQ within this is dropped (a probe must not hold
    # an association slot); an established association silent for the network timeout too.
    dicom_acse_timeout_s: float = Field(default=5.0, gt=0, le=300)
    dicom_network_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # Refuse associations whose called AE title is not ours (A-ASSOCIATE-RJ, PS3.8 9.3.4).
    dicom_check_called_ae: bool = True
    # A result value beyond this factor times the input volume's largest magnitude is refused.
    result_max_factor: float = Field(default=100.0, gt=1)
    # HTTP request bodies above this are refused with 413 before they are read (API, console
    # forms and callback alike: the largest honest body is a few kilobytes of JSON).
    max_request_bytes: int = Field(default=2**20, ge=1024)
    # --- site operations (issue 10): TLS, ports for Ray's dashboard and metrics, log format ---
    # DICOM over TLS (PS3.15 B.1) on its own port (2762 is registered for it), beside the plain
    # listener or, with dicom_plain false, instead of it. With dicom_tls_ca, senders must
    # present a certificate that CA signed.
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    dicom_tls_port: int = Field(default=2762, ge=1, le=65535)
    dicom_plain: bool = True
    # Console, API and callback over HTTPS (Ray Serve's proxy terminates TLS).
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    # Ray's dashboard and metrics exporter: a free port is taken when unset (printed at start).
    dashboard_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # "text" or "json" (one JSON object per line) for the gateway's own log lines.
    log_format: str = Field(default="text", pattern="^(text|json)$")
    # Time zone (IANA name, e.g. Europe/Madrid) in which the console shows times (issue 11);
    # unset: the host's local zone. The database keeps UTC either way.
    timezone: str | None = None

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        for scheme in ("dicom", "http"):
            cert = getattr(self, f"{scheme}_tls_cert")
            key = getattr(self, f"{scheme}_tls_key")
            if (cert is None) != (key is None):
                raise ValueError(f"{scheme}_tls_cert and {scheme}_tls_key go together")
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("dicom_tls_ca needs dicom_tls_cert and dicom_tls_key")
        if not self.dicom_plain and not self.dicom_tls:
            raise ValueError("dicom_plain=false needs a TLS listener (dicom_tls_cert/key)")
        if self.dicom_tls and self.dicom_plain and self.dicom_tls_port == self.dicom_port:
            raise ValueError("dicom_tls_port must differ from dicom_port")
        return self

    @property
    def dicom_tls(self) -> bool:
        return self.dicom_tls_cert is not None

    @property
    def http_tls(self) -> bool:
        return self.http_tls_cert is not None

    @property
    def http_scheme(self) -> str:
        return "https" if self.http_tls else "http"

    @model_validator(mode="after")
    def _check_ingest_memory(self) -> Settings:
        held = self.dicom_max_associations * self.max_instance_bytes
        if held > self.dicom_memory_budget_mb * 2**20:
            raise ValueError(
                f"dicom_max_associations x max_instance_bytes = {held // 2**20} MiB exceeds "
                f"dicom_memory_budget_mb ({self.dicom_memory_budget_mb})"
            )
        return self

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as Europe/Madrid)"
            ) from None
        return value.strip()

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return ae_title(value)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'petray.db'}"

    @property
    def resolved_shared_dir(self) -> Path:
        return self.shared_dir or self.home / "shared"

    @property
    def resolved_callback_url(self) -> str:
        return self.callback_url or (
            f"{self.http_scheme}://{self.http_host}:{self.http_port}/process_ready"
        )

    @property
    def instances_dir(self) -> Path:
        return self.home / "instances"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def output_dir(self) -> Path:
        return self.home / "output"

    def ensure_dirs(self) -> None:
        for path in (
            self.home,
            self.instances_dir,
            self.work_dir,
            self.output_dir,
            self.resolved_shared_dir / "to_process",
            self.resolved_shared_dir / "processed",
        ):
            path.mkdir(parents=True, exist_ok=True)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"PETRAY_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None
