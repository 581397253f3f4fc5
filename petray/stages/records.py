"""What one stage hands the next: typed records kept on the task, versioned (issue 14).

Each record lives under its own key of the task's ``details`` JSON column as
``{"version": N, ...fields}``. Nothing outside this module reads or writes ``details`` by key:
a stage reads what an earlier stage left with ``Packed.of(task)`` and leaves its own with
``record.put(task)``. A field renamed or retyped gets a new ``VERSION`` and a migration that
rewrites the stored rows (0008 wrote version 1 from the untyped keys of before).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from petray.errors import PermanentError

VERSION_FIELD = "version"


class HasDetails(Protocol):
    id: str
    details: dict[str, Any]


class StageRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    KEY: ClassVar[str]
    VERSION: ClassVar[int] = 1
    # Who writes it, for the error a missing record gives.
    WRITTEN_BY: ClassVar[str]

    @classmethod
    def find(cls, details: Mapping[str, Any] | None) -> Self | None:
        """The record in ``details``, or None when no stage has written it yet."""
        stored = (details or {}).get(cls.KEY)
        if stored is None:
            return None
        if not isinstance(stored, Mapping):
            raise PermanentError(f"the task's {cls.KEY} record is not an object")
        version = stored.get(VERSION_FIELD)
        if version != cls.VERSION:
            raise PermanentError(
                f"the task's {cls.KEY} record is version {version}; this petray reads version "
                f"{cls.VERSION} (`petray migrate` upgrades stored tasks)"
            )
        fields = {k: v for k, v in stored.items() if k != VERSION_FIELD}
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise PermanentError(f"the task's {cls.KEY} record is invalid: {exc}") from None

    @classmethod
    def of(cls, task: HasDetails) -> Self:
        """The record a later stage needs; a task without it cannot go on."""
        record = cls.find(task.details)
        if record is None:
            raise PermanentError(
                f"task {task.id} has no {cls.KEY} record ({cls.WRITTEN_BY} writes it); "
                "retry it from the start"
            )
        return record

    def stored(self) -> dict[str, Any]:
        return {VERSION_FIELD: self.VERSION, **self.model_dump(mode="json")}

    def put(self, task: HasDetails) -> None:
        """Record this on ``task`` (committed with the caller's unit of work)."""
        task.details = {**(task.details or {}), self.KEY: self.stored()}


class Validated(StageRecord):
    """The Validator's: the payloads of ``POST /check-model`` and of ``metadata.json``."""

    KEY = "validated"
    WRITTEN_BY = "the Validator"

    check_model: dict[str, Any]
    processing: dict[str, Any]


class Packed(StageRecord):
    """The Packer's: the upload archive and what the result will be checked and rebuilt with."""

    KEY = "packed"
    WRITTEN_BY = "the Packer"

    archive: str
    sha256: str
    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    # The received volume's largest magnitude: the Unpacker bounds the result by it (issue 9).
    input_peak: float | None = None
    # The slices in volume order, the templates of the derived series.
    slice_paths: tuple[str, ...]


class QuantCheck(BaseModel):
    """The verdict of the quantitative check (issue 15) and who decided on a held task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: str
    breaches: tuple[str, ...] = ()
    thresholds: dict[str, float | None] | None = None
    by: str | None = None
    at: str | None = None


class Quant(StageRecord):
    """The quantitative check's numbers: the Packer measures the received volume, the Unpacker
    each derived series (rows with ``change_pct``), and the check's verdict."""

    KEY = "quant"
    WRITTEN_BY = "the Packer"

    suv_factor: float | None
    suv_reason: str
    body_threshold_bqml: float
    received: dict[str, Any]
    series: tuple[dict[str, Any], ...] = ()
    check: QuantCheck

    def public(self) -> dict[str, Any]:
        """As the API and the console show it."""
        shown = self.model_dump(mode="json", exclude={"check"})
        shown["check"] = self.check.model_dump(mode="json", exclude_none=True)
        return shown
