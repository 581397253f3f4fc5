"""The Validating stage's rules: can this series be processed, and what will the service get.

Pure over what the Validator actor reads (the first header, the slice spacing, the decay of each
slice, the radiopharmaceutical table, the site's settings); no database, no Ray, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from petray.imaging.decay import SliceDecay
from petray.imaging.deid import choose_date_shift_days
from petray.site.radiopharm import RadiopharmaceuticalSpec
from petray.stages.records import Validated
from petray.stages.validation import (
    build_processing_header,
    check_model_payload,
    processing_metadata,
)


@dataclass(frozen=True)
class Validation:
    record: Validated
    date_shift_days: int
    radiopharmaceutical: str


def validate(
    task_id: str,
    first_header: Dataset,
    *,
    slice_spacing_mm: float,
    slice_decays: Sequence[SliceDecay],
    table: Sequence[RadiopharmaceuticalSpec],
    require_patient_weight: bool,
    client_id: str,
) -> Validation:
    """The payloads of ``POST /check-model`` and of ``metadata.json``, with the task's date
    shift; raises ``PermanentError`` naming what makes the series unprocessable."""
    header = build_processing_header(
        first_header,
        slice_spacing_mm=slice_spacing_mm,
        table=table,
        slice_decays=slice_decays,
        require_patient_weight=require_patient_weight,
    )
    shift = choose_date_shift_days(task_id)
    record = Validated(
        check_model=check_model_payload(header, client_id=client_id),
        processing=processing_metadata(header, date_shift_days=shift),
    )
    return Validation(record, shift, header.radiopharmaceutical)
