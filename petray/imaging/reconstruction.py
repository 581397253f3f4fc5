"""The reconstruction details the service needs to pick its model (issue 15, item 4).

What the original client sent: convolution kernel, scanner post-filter, frame duration, decay,
attenuation and scatter correction. Allow-listed fields only, and de-identified: these are free
text in DICOM (SH/LO) and a console lets staff type anything into them, so a text value is sent
only if it is short, made of the characters such settings are written with, and does not contain
an identifying value of the same header (patient name or ID, accession number, institution,
dates, UIDs: ``petray.imaging.deid``); a number only if it does not spell a long identifier. A
value that
fails is sent as null, never truncated into something that still carries part of it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom import Dataset

from petray.dicom.values import finite_float
from petray.dicom.vr import LO_MAX_LENGTH
from petray.imaging.decay import DecayFactors
from petray.imaging.deid import identifying_values
from petray.imaging.vendors import PrivateElement, vendor_profile

logger = logging.getLogger(__name__)

# Key of the processing metadata and metadata.json, and the fields it always carries (null when
# the header has no usable value), named by their DICOM keywords.
RECONSTRUCTION_KEY = "reconstruction"
RECONSTRUCTION_FIELDS = (
    "ConvolutionKernel",
    "ActualFrameDuration",
    "DecayCorrection",
    "DecayFactor",
    "AttenuationCorrectionMethod",
    "ScatterCorrectionMethod",
    "ScannerPostFilter",
)
# Kernel and correction names: "XYZ Gauss2.00", "measured,AC_CT", "Model-based", "6.4", "SS-SIMUL".
# No "^" (person names), "@", quotes or control characters.
_SETTING_TEXT = re.compile(r"^[A-Za-z0-9 .,:;_+\-/()\[\]=%#*\\]+$")
# A number whose digits contain a run this long taken from the header's identifiers (a patient
# id, a date) is dropped; shorter runs (a StudyID "120") match frame durations by chance.
NUMERIC_GUARD_DIGITS = 5
_SIGNIFICANT_DIGITS = 7  # FL values read back as doubles: 6.4 -> 6.400000095367432


def _setting_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [value]
    elif isinstance(value, Iterable):
        parts = [str(v) for v in value]
    else:
        parts = [str(value)]
    text = "\\".join(p.strip() for p in parts).strip()
    # A setting is short: a longer text (VR LO) is not one.
    if not text or len(text) > LO_MAX_LENGTH or not _SETTING_TEXT.match(text):
        return None
    return text


def _positive_int(value: Any) -> int | None:
    number = finite_float(value)
    return int(number) if number is not None and number > 0 else None


def _compact(number: float) -> int | float:
    if number.is_integer():
        return int(number)
    return float(f"{number:.{_SIGNIFICANT_DIGITS}g}")


def _private_setting(ds: Dataset, element: PrivateElement) -> int | float | None:
    number = element.number(ds)
    return None if number is None else _compact(number)


def _scanner_post_filter(ds: Dataset) -> dict[str, dict[str, int | float | None]] | None:
    elements = vendor_profile(ds).reconstruction
    by_creator: dict[str, dict[str, int | float | None]] = {}
    for element in elements:
        value = _private_setting(ds, element)
        if value is not None:
            by_creator.setdefault(element.creator, {})[element.name] = value
    return by_creator or None


def _identifies(value: Any, identity: set[str], digit_runs: set[str]) -> bool:
    if isinstance(value, str):
        folded = value.casefold()
        return any(secret.casefold() in folded for secret in identity)
    if isinstance(value, int | float) and not isinstance(value, bool):
        digits = re.sub(r"\D", "", f"{value}")
        return any(run in digits for run in digit_runs)
    return False


def _without_identity(value: Any, identity: set[str], digit_runs: set[str], key: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_identity(v, identity, digit_runs, k) for k, v in value.items()}
    if _identifies(value, identity, digit_runs):
        logger.warning("reconstruction detail %s dropped: it contains an identifying value", key)
        return None
    return value


def _digit_runs(identity: set[str]) -> set[str]:
    runs: set[str] = set()
    for secret in identity:
        runs |= {run for run in re.findall(r"\d+", secret) if len(run) >= NUMERIC_GUARD_DIGITS}
    return runs


def reconstruction_details(
    ds: Dataset, *, decay_correction: str | None, decay_factors: DecayFactors | None
) -> dict[str, Any]:
    """The ``reconstruction`` object of the processing metadata, from one instance's header.

    ``decay_correction`` and ``decay_factors`` come from the whole series
    (``petray.imaging.decay``).
    """
    details: dict[str, Any] = {
        "ConvolutionKernel": _setting_text(ds.get("ConvolutionKernel")),
        "ActualFrameDuration": _positive_int(ds.get("ActualFrameDuration")),  # ms
        "DecayCorrection": decay_correction,
        "DecayFactor": decay_factors.as_metadata() if decay_factors is not None else None,
        "AttenuationCorrectionMethod": _setting_text(ds.get("AttenuationCorrectionMethod")),
        "ScatterCorrectionMethod": _setting_text(ds.get("ScatterCorrectionMethod")),
        "ScannerPostFilter": _scanner_post_filter(ds),
    }
    identity = identifying_values(ds)
    digit_runs = _digit_runs(identity)
    return {key: _without_identity(v, identity, digit_runs, key) for key, v in details.items()}
