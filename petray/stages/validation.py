"""The processing header: what the remote service needs from a PET series (issue 3).

``build_processing_header`` reads one representative instance and either returns a complete
``ProcessingHeader`` or raises ``ValidationFailed`` naming every missing or invalid item, so
staff fix the scanner export once instead of one field per retry. Reasons never quote patient
data.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pydicom import Dataset

from petray.dicom.geometry import orientation_problem
from petray.dicom.times import acquisition_start, injection_start, parse_date, text
from petray.dicom.values import positive_float
from petray.errors import ValidationFailed
from petray.imaging.decay import (
    DecayFactors,
    SliceDecay,
    check_decay_factors,
    decay_correction_problem,
)
from petray.imaging.recon import parse_iterations_subsets
from petray.imaging.reconstruction import (
    RECONSTRUCTION_FIELDS,
    RECONSTRUCTION_KEY,
    reconstruction_details,
)
from petray.imaging.vendors import activity_factor
from petray.site.radiopharm import (
    SEED_RADIOPHARMACEUTICALS,
    RadiopharmaceuticalSpec,
    match_radiopharmaceutical,
)

logger = logging.getLogger(__name__)

BQ_PER_MBQ = 1e6
CM_PER_M = 100.0
# PatientSize is metres (PS3.3 C.7.1.3); a value above this is taken as centimetres written by
# a misconfigured console rather than a 3 m tall patient.
MAX_HEIGHT_M = 3.0
METADATA_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_AGE = re.compile(r"^(\d{3})([DWMY])$")  # PS3.5 6.2, VR AS
_MAX_REPORTED_TEXT = 64


@dataclass(frozen=True)
class ProcessingHeader:
    """Everything ``POST /check_model`` and the ``POST /processing`` metadata carry."""

    manufacturer_model_name: str
    reconstruction_method: str
    iterations: int
    subsets: int
    voxel_spacing_mm: tuple[float, float, float]  # row, column, slice
    slice_thickness_mm: float
    radiopharmaceutical: str
    half_life_s: float
    dose_mbq: float
    radiopharmaceutical_start: datetime
    acquisition_start: datetime
    weight_kg: float | None  # None: the header has none and the site does not require it
    height_cm: float | None
    age_years: int | None
    decay_correction: str | None = None  # START, ADMIN or NONE (petray.imaging.decay)
    decay_factors: DecayFactors | None = None
    # Allow-listed, de-identified reconstruction details (petray.imaging.reconstruction).
    reconstruction: dict[str, Any] | None = None


def _floats(value: Any, count: int) -> list[float] | None:
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _age_years(ds: Dataset, reference: date | None) -> int | None:
    match = _AGE.match(text(ds, "PatientAge"))
    if match:
        number, unit = int(match.group(1)), match.group(2)
        return number if unit == "Y" else 0
    born = parse_date(text(ds, "PatientBirthDate"))
    if born is None or reference is None or born > reference:
        return None
    return reference.year - born.year - ((reference.month, reference.day) < (born.month, born.day))


def _height_cm(ds: Dataset) -> float | None:
    size = positive_float(ds.get("PatientSize"))
    if size is None:
        return None
    return size * CM_PER_M if size <= MAX_HEIGHT_M else size


def _orientation_problem(ds: Dataset) -> str | None:
    cosines = _floats(ds.get("ImageOrientationPatient"), 6)
    if cosines is None:
        return "orientation (ImageOrientationPatient) missing or invalid"
    if orientation_problem(cosines) is not None:
        return "orientation (ImageOrientationPatient) is not orthonormal"
    if _floats(ds.get("ImagePositionPatient"), 3) is None:
        return "position (ImagePositionPatient) missing or invalid"
    return None


def _codes(item: Dataset, keyword: str) -> tuple[list[str], str]:
    values: list[str] = []
    meanings: list[str] = []
    for code in item.get(keyword) or ():
        values.append(text(code, "CodeValue") or text(code, "LongCodeValue"))
        meanings.append(text(code, "CodeMeaning"))
    return [v for v in values if v], " ".join(m for m in meanings if m)


def _quote(text: str) -> str:
    return text if len(text) <= _MAX_REPORTED_TEXT else text[:_MAX_REPORTED_TEXT] + "..."


def _radiopharmaceutical(
    item: Dataset, table: Sequence[RadiopharmaceuticalSpec]
) -> tuple[RadiopharmaceuticalSpec | None, str | None]:
    name = text(item, "Radiopharmaceutical")
    codes, code_meaning = _codes(item, "RadiopharmaceuticalCodeSequence")
    nuclide_codes, nuclide_meaning = _codes(item, "RadionuclideCodeSequence")
    if not name and not codes and not code_meaning:
        return (
            None,
            "radiopharmaceutical (Radiopharmaceutical, RadiopharmaceuticalCodeSequence) missing",
        )
    for candidate_text in (name, code_meaning):
        spec = match_radiopharmaceutical(
            text=candidate_text,
            codes=codes,
            nuclide_text=nuclide_meaning,
            nuclide_codes=nuclide_codes,
            table=table,
        )
        if spec is not None:
            return spec, None
    named = name or code_meaning or ",".join(codes)
    return None, f"unknown radiopharmaceutical '{_quote(named)}'"


# SeriesType value 1 (PS3.3 C.8.9.1.1.1) of series made of several frames in time.
MULTI_FRAME_SERIES_TYPES = frozenset({"DYNAMIC", "GATED"})


def build_processing_header(
    ds: Dataset,
    *,
    slice_spacing_mm: float,
    table: Sequence[RadiopharmaceuticalSpec] = SEED_RADIOPHARMACEUTICALS,
    slice_decays: Sequence[SliceDecay] = (),
    require_patient_weight: bool = False,
) -> ProcessingHeader:
    """The processing header of a series from one of its instances, or ``ValidationFailed``.

    ``slice_spacing_mm`` is the distance between slice centres measured from the positions of the
    whole series (the Compilator/Packer know it; one instance cannot); ``slice_decays`` the
    DecayFactor of every slice, checked against the series' DecayCorrection. Without a
    PatientWeight the series is processed (no SUV) unless the site requires one.
    """
    series_type = ds.get("SeriesType")
    if series_type and str(series_type[0]).upper() in MULTI_FRAME_SERIES_TYPES:
        # The service denoises one static 3-D volume; a time series is not that.
        raise ValidationFailed(
            f"{str(series_type[0]).upper()} PET series are not supported: "
            "only static (whole body or image) series can be processed"
        )
    problems: list[str] = []

    def need(value: Any, what: str) -> Any:
        if value is None or value == "":
            problems.append(what)
        return value

    model = need(text(ds, "ManufacturerModelName"), "scanner model (ManufacturerModelName) missing")
    method = need(
        text(ds, "ReconstructionMethod"), "reconstruction method (ReconstructionMethod) missing"
    )
    pixel_spacing = _floats(ds.get("PixelSpacing"), 2)
    if pixel_spacing is None or min(pixel_spacing) <= 0:
        problems.append("pixel spacing (PixelSpacing) missing or invalid")
    slice_spacing = need(positive_float(slice_spacing_mm), "slice spacing missing or not positive")
    thickness = need(
        positive_float(ds.get("SliceThickness")), "slice thickness (SliceThickness) missing"
    )
    if (orientation := _orientation_problem(ds)) is not None:
        problems.append(orientation)
    need(
        positive_float(ds.get("RescaleSlope")),
        "rescale slope (RescaleSlope) missing or not positive",
    )
    if _floats([ds.get("RescaleIntercept")], 1) is None:
        problems.append("rescale intercept (RescaleIntercept) missing")
    try:
        # Bq/ml, or a vendor's units petray converts (petray.imaging.vendors: Philips counts).
        activity_factor(ds)
    except ValidationFailed as exc:
        problems.append(str(exc))
    weight = positive_float(ds.get("PatientWeight"))
    if weight is None and require_patient_weight:
        problems.append("patient weight (PatientWeight) missing")
    correction = text(ds, "DecayCorrection").upper()
    decay_factors: DecayFactors | None = None
    if (problem := decay_correction_problem(correction)) is not None:
        problems.append(problem)
    else:
        try:
            summary = check_decay_factors(correction, slice_decays)
            decay_factors = summary if summary.slices else None
        except ValidationFailed as exc:
            problems.append(str(exc))
    acquisition = need(
        acquisition_start(ds), "acquisition start (SeriesDate/SeriesTime) missing or invalid"
    )

    spec: RadiopharmaceuticalSpec | None = None
    injection: datetime | None = None
    dose: float | None = None
    sequence = ds.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        problems.append(
            "radiopharmaceutical sequence (RadiopharmaceuticalInformationSequence) missing"
        )
    else:
        item = sequence[0]
        spec, reason = _radiopharmaceutical(item, table)
        if reason:
            problems.append(reason)
        injection = need(
            injection_start(item, ds, acquisition),
            "injection time (RadiopharmaceuticalStartDateTime/StartTime) missing or invalid",
        )
        dose_bq = need(
            positive_float(item.get("RadionuclideTotalDose")),
            "injected dose (RadionuclideTotalDose) missing or not positive",
        )
        dose = None if dose_bq is None else dose_bq / BQ_PER_MBQ
        if injection is not None and acquisition is not None and injection > acquisition:
            problems.append("injection time is after the acquisition start")

    if problems:
        raise ValidationFailed("header incomplete: " + "; ".join(problems))
    # The checks above guarantee these; the asserts narrow the types for mypy.
    assert spec is not None and injection is not None and dose is not None
    assert pixel_spacing is not None
    reference = acquisition.date() if acquisition else None
    iterations, subsets = parse_iterations_subsets(ds)
    return ProcessingHeader(
        manufacturer_model_name=model,
        reconstruction_method=method,
        iterations=iterations,
        subsets=subsets,
        voxel_spacing_mm=(pixel_spacing[0], pixel_spacing[1], float(slice_spacing)),
        slice_thickness_mm=float(thickness),
        radiopharmaceutical=spec.name,
        half_life_s=spec.half_life_s,
        dose_mbq=dose,
        radiopharmaceutical_start=injection,
        acquisition_start=acquisition,
        weight_kg=weight,
        height_cm=_height_cm(ds),
        age_years=_age_years(ds, reference),
        decay_correction=correction or None,
        decay_factors=decay_factors,
        reconstruction=reconstruction_details(
            ds, decay_correction=correction or None, decay_factors=decay_factors
        ),
    )


def check_model_payload(header: ProcessingHeader, *, client_id: str) -> dict[str, Any]:
    """The ``POST /check_model`` body, with the protocol's field names (REMOTE_PROTOCOL.md v1)."""
    return {"id_client": client_id, **_model_fields(header)}


def _model_fields(header: ProcessingHeader) -> dict[str, Any]:
    return {
        "ManufacturerModelName": header.manufacturer_model_name,
        "ReconstructionMethod": header.reconstruction_method,
        "Iteraciones": header.iterations,
        "Subsets": header.subsets,
        "VoxelSpacing": list(header.voxel_spacing_mm),
        "SliceThickness": header.slice_thickness_mm,
        "Radiofarmaco": header.radiopharmaceutical,
        "HalfLife": header.half_life_s,
    }


def _shifted(moment: datetime, days: int) -> str:
    return (moment + timedelta(days=days)).strftime(METADATA_DATETIME_FORMAT)


def processing_metadata(header: ProcessingHeader, *, date_shift_days: int) -> dict[str, Any]:
    """The ``metadata`` object of ``POST /processing``: the check_model fields plus dose, times
    (shifted by the task's days, so intervals are kept) and body measures."""
    return {
        **_model_fields(header),
        "radiopharmaceutical_dose": header.dose_mbq,
        "radiopharmaceutical_start": _shifted(header.radiopharmaceutical_start, date_shift_days),
        "acquisition_start": _shifted(header.acquisition_start, date_shift_days),
        "weight": header.weight_kg,  # null: no PatientWeight, so no SUV either
        "height": header.height_cm,
        "age": header.age_years,
        # How the series was reconstructed and corrected, for the service to pick its model.
        RECONSTRUCTION_KEY: dict(header.reconstruction or dict.fromkeys(RECONSTRUCTION_FIELDS)),
    }
