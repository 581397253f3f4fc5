"""Decay correction of a PET series: what the pixels are corrected to, and the per-slice
DecayFactor checked against it (issue 15).

DecayCorrection (PS3.3 C.8.9.1, PET Series module) has three enumerated values:
- START: pixels are corrected to the acquisition start (SeriesDate/SeriesTime), the standard
  that Siemens, Philips and most GE exports use;
- ADMIN: corrected to the radiopharmaceutical administration (a GE option);
- NONE: not corrected; each bed is as it decayed while it was acquired.

The service denoises activity concentration and takes all three; which one applies travels in
the processing metadata, and the SUV scale (``petray.imaging.suv``) follows it (no SUV for NONE).

DecayFactor (0054,1321, PET Image module) is written per slice (Siemens and GE: one value per
bed position). The factors of one series must agree with its DecayCorrection: with START or
ADMIN every image is scaled up to an earlier time (factor >= 1) and a later frame needs a larger
factor; with NONE there is nothing to scale (factor 1 or absent). A series whose slices say
otherwise cannot be quantified and is refused with that reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from petray.dicom.values import finite_float
from petray.errors import ValidationFailed

START = "START"
ADMIN = "ADMIN"
NONE = "NONE"
# What the pixel values are decay corrected to, per enumerated value.
DECAY_REFERENCES: dict[str, str] = {
    START: "acquisition start",
    ADMIN: "radiopharmaceutical administration",
    NONE: "not decay corrected",
}
# DS values carry 6 to 16 significant digits; factors of one bed agree to far better than this.
RELATIVE_TOLERANCE = 1e-4
_SLICE_TAGS = ("DecayFactor", "FrameReferenceTime")


@dataclass(frozen=True, slots=True)
class SliceDecay:
    """One slice's DecayFactor and FrameReferenceTime (ms), None where it has none."""

    decay_factor: float | None
    frame_reference_ms: float | None


@dataclass(frozen=True, slots=True)
class DecayFactors:
    """The series' DecayFactor values, summarised for the service and the task page."""

    slices: int  # slices that carry a DecayFactor
    minimum: float | None
    maximum: float | None

    def as_metadata(self) -> dict[str, Any] | None:
        if not self.slices:
            return None
        return {"min": self.minimum, "max": self.maximum, "slices": self.slices}


def slice_decay(ds: Any) -> SliceDecay:
    return SliceDecay(
        finite_float(ds.get("DecayFactor")), finite_float(ds.get("FrameReferenceTime"))
    )


def read_slice_decays(paths: Iterable[Path]) -> list[SliceDecay]:
    """DecayFactor and FrameReferenceTime of every file, reading only those two elements."""
    found: list[SliceDecay] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_SLICE_TAGS))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            # The Packer names an unreadable file; here it only has no factor to compare.
            found.append(SliceDecay(None, None))
            continue
        found.append(slice_decay(ds))
    return found


@dataclass(frozen=True, slots=True)
class RecordedDecay:
    """What the database holds of one slice: its file, and its values when ingest read them."""

    path: Path
    recorded: bool
    decay_factor: float | None
    frame_reference_ms: float | None


def recorded_slice_decays(slices: Sequence[RecordedDecay]) -> list[SliceDecay]:
    """Every slice's values, in order: as recorded at ingest, else read from its file (rows
    stored before ingest recorded them)."""
    unrecorded = [s.path for s in slices if not s.recorded]
    read = iter(read_slice_decays(unrecorded))
    return [
        SliceDecay(s.decay_factor, s.frame_reference_ms) if s.recorded else next(read)
        for s in slices
    ]


def decay_correction_problem(value: str) -> str | None:
    if value and value not in DECAY_REFERENCES:
        return (
            f"decay correction (DecayCorrection) must be one of {', '.join(DECAY_REFERENCES)}, "
            f"got '{value[:16]}'"
        )
    return None


def check_decay_factors(correction: str, slices: Sequence[SliceDecay]) -> DecayFactors:
    """Summarise the per-slice DecayFactor, or ``ValidationFailed`` when it contradicts
    ``correction`` (the series' DecayCorrection, upper case; "" when the header has none)."""
    factors = [s.decay_factor for s in slices if s.decay_factor is not None]
    summary = DecayFactors(len(factors), min(factors, default=None), max(factors, default=None))
    if not factors:
        return summary
    if any(f <= 0 for f in factors):
        raise ValidationFailed("decay factor (DecayFactor) is not positive in some slices")
    if correction == NONE:
        if any(abs(f - 1) > RELATIVE_TOLERANCE for f in factors):
            raise ValidationFailed(
                "decay factor (DecayFactor) is not 1 but DecayCorrection is NONE: the header "
                "contradicts itself about decay correction"
            )
        return summary
    if correction in (START, ADMIN):
        if any(f < 1 - RELATIVE_TOLERANCE for f in factors):
            raise ValidationFailed(
                f"decay factor (DecayFactor) below 1 with DecayCorrection {correction}: images "
                "corrected to an earlier time are scaled up, never down"
            )
        timed = sorted(
            (s.frame_reference_ms, s.decay_factor)
            for s in slices
            if s.frame_reference_ms is not None and s.decay_factor is not None
        )
        for (_, earlier), (_, later) in itertools.pairwise(timed):
            if later < earlier * (1 - RELATIVE_TOLERANCE):
                raise ValidationFailed(
                    "decay factor (DecayFactor) decreases while FrameReferenceTime increases: "
                    "the slices disagree about decay correction"
                )
    return summary
