"""SUV body-weight scale of a PET series, following the QIBA SUV vendor-neutral pseudo-code.

SUVbw = activity concentration (Bq/ml) x weight (g) / injected dose decayed to the decay
reference (Bq). ``suv_scale`` returns that multiplier for volumes in Bq/ml (what petray packs,
after the vendor conversion of ``petray.imaging.vendors``), or the reason there is none, so the
quantitative check (issue 15) reports "no weight" instead of a wrong number.

Decay reference (PS3.3 C.8.9.1.1.4, DecayCorrection): START means the pixels are decay corrected
to the acquisition start, so the dose is decayed to it; ADMIN means corrected to the injection
time, so the dose is used as injected. The acquisition start is SeriesDate/SeriesTime, unless it
is later than the earliest AcquisitionTime of the series (GE rewrites the series time when a
series is re-processed): then GE's private scan time (0009,100D) or the earliest acquisition
time is the reference, as QIBA prescribes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydicom import Dataset

from petray.dicom.times import acquisition_start, injection_start, parse_dt, text
from petray.dicom.values import positive_float
from petray.imaging.vendors import (
    GEMS_PETD,
    PHILIPS_ACTIVITY_FACTOR,
    PHILIPS_SUV_FACTOR,
    PrivateElement,
)

GRAMS_PER_KG = 1000.0
# The scan start GE keeps when it rewrites SeriesTime on re-processing.
GE_SCAN_DATETIME = PrivateElement(0x0009, GEMS_PETD, 0x0D, "scan_datetime", "DT")


@dataclass(frozen=True)
class SuvScale:
    """Multiply Bq/ml by ``factor`` to get SUVbw (g/ml); ``factor`` None says why in ``reason``."""

    factor: float | None
    reason: str = ""
    decay_correction: str = ""

    @classmethod
    def none(cls, reason: str, decay_correction: str = "") -> SuvScale:
        return cls(None, reason, decay_correction)


def _scan_start(ds: Dataset, earliest_acquisition: datetime | None) -> datetime | None:
    series = acquisition_start(ds)
    if series is None or earliest_acquisition is None or series <= earliest_acquisition:
        return series
    ge_scan = GE_SCAN_DATETIME.value(ds)
    if isinstance(ge_scan, bytes):
        ge_scan = ge_scan.decode("ascii", "ignore")
    return parse_dt(str(ge_scan or "").strip("\x00 ")) or earliest_acquisition


def _philips_scale(ds: Dataset) -> float | None:
    # Philips's own SUV per rescaled count, over its Bq/ml per rescaled count: SUV per Bq/ml.
    # (7053,1000) is SUVbw per rescaled stored value, (7053,1009) Bq/ml per rescaled stored value.
    suv = PHILIPS_SUV_FACTOR.number(ds)
    activity = PHILIPS_ACTIVITY_FACTOR.number(ds)
    if suv is None or activity is None or suv <= 0 or activity <= 0:
        return None
    return suv / activity


def suv_scale(
    ds: Dataset,
    *,
    half_life_s: float | None,
    earliest_acquisition: datetime | None = None,
) -> SuvScale:
    """The SUVbw scale of the series ``ds`` belongs to.

    ``half_life_s`` is the radionuclide's half-life from petray's table, used when the header's
    RadionuclideHalfLife is absent; ``earliest_acquisition`` the earliest AcquisitionDate/Time of
    the series' instances, when known.
    """
    units = text(ds, "Units").upper()
    correction = text(ds, "DecayCorrection").upper()
    if units == "GML":
        return SuvScale.none("pixels are already SUV (Units GML)", correction)
    weight = positive_float(ds.get("PatientWeight"))
    if weight is None:
        return SuvScale.none("no weight", correction)
    sequence = ds.get("RadiopharmaceuticalInformationSequence")
    item = sequence[0] if sequence else Dataset()
    dose = positive_float(item.get("RadionuclideTotalDose"))
    if dose is None:
        if units == "CNTS" and (philips := _philips_scale(ds)) is not None:
            return SuvScale(philips, "", correction)
        return SuvScale.none("no injected dose", correction)
    if correction == "ADMIN":
        return SuvScale(weight * GRAMS_PER_KG / dose, "", correction)
    if correction != "START":
        return SuvScale.none(
            f"decay correction '{correction or 'missing'}' is not START/ADMIN", correction
        )
    scan = _scan_start(ds, earliest_acquisition)
    if scan is None:
        return SuvScale.none("no acquisition time", correction)
    injected = injection_start(item, ds, scan)
    if injected is None:
        return SuvScale.none("no injection time", correction)
    half_life = positive_float(item.get("RadionuclideHalfLife")) or positive_float(half_life_s)
    if half_life is None:
        return SuvScale.none("no half-life", correction)
    elapsed = (scan - injected).total_seconds()
    if elapsed < 0:
        return SuvScale.none("injection after the acquisition start", correction)
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return SuvScale(weight * GRAMS_PER_KG / decayed, "", correction)
