"""Process settings: ports, paths, URLs and secrets, read once from ``PETRAY_*`` variables.

Site configuration that staff change at run time (devices, filters, thresholds) lives in the
database instead; see ``petray.db.models.SiteConfig``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from petray.errors import ConfigurationError

AE_TITLE_MAX_LENGTH = 16  # PS3.5 6.2, VR AE


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

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > AE_TITLE_MAX_LENGTH or "\\" in value:
            raise ValueError("AE title must be 1-16 characters without backslash (PS3.5 6.2)")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'petray.db'}"

    @property
    def resolved_shared_dir(self) -> Path:
        return self.shared_dir or self.home / "shared"

    @property
    def resolved_callback_url(self) -> str:
        return self.callback_url or f"http://{self.http_host}:{self.http_port}/process_ready"

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
