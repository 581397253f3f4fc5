"""Configuration of the reference processing service: one ``ReferenceConfig`` built at start-up,
and the test switches that can also be flipped at run time through ``POST /_control``.

Paths and tokens come from petray's own ``Settings`` (``PETRAY_SHARED_DIR``,
``PETRAY_REMOTE_TOKEN``, ``PETRAY_CALLBACK_TOKEN``, ``PETRAY_CALLBACK_URL``) so both sides of the
protocol read the same variables; switches start from ``PETRAY_REFERENCE_<SWITCH>``
(e.g. ``PETRAY_REFERENCE_SLOW=5``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from petray.errors import ConfigurationError
from petray.retry import Backoff
from petray.settings import Settings, load_settings
from serve.reference.archive import MaliciousMode
from serve.reference.denoise import GuidedFilterParams
from serve.reference.licences import LicenceTable

SWITCH_ENV_PREFIX = "PETRAY_REFERENCE_"
REFUSAL_CODES = frozenset({405, 406, 407})
DEFAULT_OVERSIZED_BYTES = 9 * 1024**3  # above petray's default max_result_bytes (8 GiB)
DEFAULT_MAX_INPUT_BYTES = 16 * 1024**3


class Switches(BaseModel):
    """Ways to make the service misbehave on purpose; all off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slow: float = Field(default=0.0, ge=0, description="extra seconds per processing job")
    delay: float = Field(
        default=0.0, ge=0, description="extra seconds before answering check_model/processing"
    )
    fail_5xx: bool = Field(default=False, description="check_model and processing answer 503")
    refuse: int | None = Field(default=None, description="check_model answers 405, 406 or 407")
    drop_callback: bool = Field(default=False, description="never call petray back")
    malicious: MaliciousMode | None = Field(default=None, description="write bad result archives")
    oversized_bytes: int = Field(
        default=DEFAULT_OVERSIZED_BYTES, gt=0, description="uncompressed size of 'oversized'"
    )

    @field_validator("refuse")
    @classmethod
    def _check_refuse(cls, value: int | None) -> int | None:
        if value is not None and value not in REFUSAL_CODES:
            raise ValueError(f"refuse must be one of {sorted(REFUSAL_CODES)} or null")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Switches:
        environ = os.environ if environ is None else environ
        values = {
            name: environ[SWITCH_ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if environ.get(SWITCH_ENV_PREFIX + name.upper(), "").strip()
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid {SWITCH_ENV_PREFIX}* switch: {exc}") from None

    def updated(self, changes: Mapping[str, Any]) -> Switches:
        """A new ``Switches`` with ``changes`` applied; raises ``ValidationError`` on bad input."""
        return type(self).model_validate({**self.model_dump(), **changes})


class SwitchBoard:
    """The current switches, swapped whole so request and worker threads see a consistent set."""

    def __init__(self, initial: Switches) -> None:
        self._lock = threading.Lock()
        self._current = initial

    @property
    def current(self) -> Switches:
        return self._current

    def update(self, changes: Mapping[str, Any]) -> Switches:
        with self._lock:
            self._current = self._current.updated(changes)
            return self._current


@dataclass(frozen=True)
class ReferenceConfig:
    shared_dir: Path
    token: str
    callback_token: str
    callback_url: str = "http://127.0.0.1:8000/process_ready"
    licences: LicenceTable = field(default_factory=LicenceTable.permissive)
    switches: Switches = field(default_factory=Switches)
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    compress_level: int = 0
    denoise: GuidedFilterParams = field(default_factory=GuidedFilterParams)
    callback_timeout_s: float = 10.0
    callback_attempts: int = 6
    callback_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=10.0))

    def __post_init__(self) -> None:
        if not self.token or not self.callback_token:
            raise ConfigurationError("the reference service needs both tokens set")
        if not 0 <= self.compress_level <= 9:
            raise ConfigurationError(f"compress_level must be 0-9, got {self.compress_level}")
        if self.callback_attempts < 1:
            raise ConfigurationError("callback_attempts must be at least 1")

    @property
    def to_process_dir(self) -> Path:
        return self.shared_dir / "to_process"

    @property
    def processed_dir(self) -> Path:
        return self.shared_dir / "processed"

    def ensure_dirs(self) -> None:
        self.to_process_dir.mkdir(parents=True, exist_ok=True)
        self.processed_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, *, licences_path: Path | None = None, **overrides: Any) -> ReferenceConfig:
        """Build from petray's ``PETRAY_*`` settings and the ``PETRAY_REFERENCE_*`` switches."""
        values: dict[str, Any] = {
            "licences": (
                LicenceTable.load(licences_path) if licences_path else LicenceTable.permissive()
            ),
            "switches": Switches.from_env(),
            **overrides,
        }
        return cls.for_settings(load_settings(), **values)

    @classmethod
    def for_settings(cls, settings: Settings, **overrides: Any) -> ReferenceConfig:
        """The service side of a petray configured by ``settings``: same folder and tokens."""
        values: dict[str, Any] = {
            "shared_dir": settings.resolved_shared_dir,
            "token": settings.remote_token,
            "callback_token": settings.callback_token,
            "callback_url": settings.resolved_callback_url,
            **overrides,
        }
        return cls(**values)
