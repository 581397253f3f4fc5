"""Vendor exports as they really are (issue 15): one table row per vendor, not scattered ``if``s.

A row says, for one scanner maker,
- which ``Units`` (PS3.3 C.8.9.1.1.3) petray accepts and how a slice's rescaled values become
  Bq/ml: Philips may store counts (``CNTS``) with a per-slice activity concentration scale
  factor in its private group, so Bq/ml = (stored x RescaleSlope + RescaleIntercept) x
  (7053,1009);
- which private elements describe the reconstruction the service should know about (GE's
  scanner post-filter in the GEMS_PETD_01 block);
- which private elements a derived series may keep, and how to recompute them for the new
  pixel values (Philips SUV and activity factors; GE's reconstruction description).

Private elements are always found through their private creator (PS3.5 7.8.1), never by a fixed
element number: the block a creator lands in differs between exports.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from petray.dicom.values import finite_float
from petray.dicom.vr import DS_MAX_LENGTH
from petray.errors import ValidationFailed
from petray.imaging.recon import vendor_rule

BQML = "BQML"
CNTS = "CNTS"
_MAX_QUOTED = 64


@dataclass(frozen=True)
class PrivateElement:
    """One element of a vendor's private block: (group, creator, offset 0x00-0xFF)."""

    group: int
    creator: str
    offset: int
    name: str  # as the vendor's conformance statement (and pydicom's dictionary) names it
    vr: str

    def tag_text(self) -> str:
        return f"({self.group:04X},10{self.offset:02X})"

    def value(self, ds: Dataset) -> Any | None:
        try:
            return ds.private_block(self.group, self.creator)[self.offset].value
        except KeyError:
            return None

    def number(self, ds: Dataset) -> float | None:
        """The element's first value as a finite number, whatever VR it arrived with."""
        return _number(self.value(ds), self.vr)


# Binary VRs of the private elements below: the struct code of one little-endian value.
_BINARY_VR = {"SL": "<i", "SS": "<h", "US": "<H", "UL": "<I", "FL": "<f", "FD": "<d"}


def _number(value: Any, vr: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        # VR UN (or implicit VR without a dictionary entry): decode as the element's real VR.
        code = _BINARY_VR.get(vr)
        if code is None:
            value = value.decode("ascii", "ignore").strip("\x00 ").split("\\")[0]
        elif len(value) >= struct.calcsize(code):
            value = struct.unpack_from(code, value)[0]
        else:
            return None
    elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    return finite_float(value)


PHILIPS_PET = "Philips PET Private Group"
PHILIPS_SUV_FACTOR = PrivateElement(0x7053, PHILIPS_PET, 0x00, "SUV Scale Factor", "DS")
PHILIPS_ACTIVITY_FACTOR = PrivateElement(
    0x7053, PHILIPS_PET, 0x09, "Activity Concentration Scale Factor", "DS"
)
GEMS_PETD = "GEMS_PETD_01"
GE_ITERATIONS = PrivateElement(0x0009, GEMS_PETD, 0xB2, "ir_num_iterations", "SL")
GE_SUBSETS = PrivateElement(0x0009, GEMS_PETD, 0xB3, "ir_num_subsets", "SL")
GE_POST_FILTER = PrivateElement(0x0009, GEMS_PETD, 0xBA, "post_filter", "SL")
GE_POST_FILTER_PARAMETER = PrivateElement(0x0009, GEMS_PETD, 0xBB, "post_filt_parm", "FL")
GE_Z_FILTER_RATIO = PrivateElement(0x0009, GEMS_PETD, 0xDC, "ir_z_filter_ratio", "FL")


@dataclass(frozen=True)
class ActivityUnits:
    """Stored ``units`` become Bq/ml as rescaled value x ``factor`` (per slice); no factor: 1."""

    units: str
    factor: PrivateElement | None = None
    missing: str = ""  # the refusal when the factor is absent


@dataclass(frozen=True)
class KeptPrivate:
    """A private element a derived series keeps, and its value for the new pixels: copied as it
    is, divided by the activity factor applied when the source was read (a factor per stored
    value of the source becomes one per Bq/ml), or replaced by ``fixed``."""

    element: PrivateElement
    divide_by_applied_factor: bool = False
    fixed: float | None = None


@dataclass(frozen=True)
class VendorProfile:
    vendor: str
    activity_units: tuple[ActivityUnits, ...] = (ActivityUnits(BQML),)
    reconstruction: tuple[PrivateElement, ...] = ()
    kept_private: tuple[KeptPrivate, ...] = ()


PHILIPS_COUNTS_REFUSAL = (
    "Philips counts (Units CNTS) without the activity concentration scale factor (7053,1009): "
    "cannot convert to Bq/ml"
)

# Vendors are recognised by petray.imaging.recon's Manufacturer patterns, so one table says who is
# who.
VENDOR_PROFILES: Mapping[str, VendorProfile] = {
    "philips": VendorProfile(
        "philips",
        activity_units=(
            ActivityUnits(BQML),
            ActivityUnits(CNTS, PHILIPS_ACTIVITY_FACTOR, PHILIPS_COUNTS_REFUSAL),
        ),
        kept_private=(
            # Derived pixels are Bq/ml: SUV per stored value is SUV per Bq/ml from now on, and
            # the activity factor, if the source had one, is 1.
            KeptPrivate(PHILIPS_SUV_FACTOR, divide_by_applied_factor=True),
            KeptPrivate(PHILIPS_ACTIVITY_FACTOR, fixed=1.0),
        ),
    ),
    "ge": VendorProfile(
        "ge",
        reconstruction=(GE_POST_FILTER, GE_POST_FILTER_PARAMETER, GE_Z_FILTER_RATIO),
        kept_private=tuple(
            KeptPrivate(e)
            for e in (
                GE_ITERATIONS,
                GE_SUBSETS,
                GE_POST_FILTER,
                GE_POST_FILTER_PARAMETER,
                GE_Z_FILTER_RATIO,
            )
        ),
    ),
}
DEFAULT_PROFILE = VendorProfile("other")


def vendor_profile(ds: Dataset) -> VendorProfile:
    manufacturer = str(ds.get("Manufacturer", "") or "")
    return VENDOR_PROFILES.get(vendor_rule(manufacturer).vendor, DEFAULT_PROFILE)


def _units(ds: Dataset) -> str:
    value = ds.get("Units")
    return "" if value is None else str(value).strip().upper()


def _quote(text: str) -> str:
    return text if len(text) <= _MAX_QUOTED else text[:_MAX_QUOTED] + "..."


def activity_units(ds: Dataset) -> ActivityUnits:
    """The row that converts this slice's Units to Bq/ml, or ``ValidationFailed`` saying why not."""
    units = _units(ds)
    for row in vendor_profile(ds).activity_units:
        if row.units == units:
            return row
    raise ValidationFailed(f"units (Units) must be {BQML}, got '{_quote(units)}'")


def activity_factor(ds: Dataset) -> float:
    """Bq/ml per rescaled value of this slice (1.0 when it already is Bq/ml).

    Per slice: Philips writes (7053,1009) in every image and it may differ between them.
    """
    row = activity_units(ds)
    if row.factor is None:
        return 1.0
    factor = row.factor.number(ds)
    if factor is None or factor <= 0:
        raise ValidationFailed(row.missing)
    return factor


@dataclass(frozen=True, slots=True)
class DerivedPrivate:
    """A private element to write into a derived slice: its place, VR and new value."""

    element: PrivateElement
    value: Any


def _ds_text(number: float) -> str:
    for digits in range(12, 4, -1):
        text = f"{number:.{digits}g}"
        if len(text) <= DS_MAX_LENGTH:
            return text
    raise ValueError(f"{number} does not fit a DS value")


def _written(kept: KeptPrivate, number: float) -> Any:
    vr = kept.element.vr
    if vr == "DS":
        return _ds_text(number)
    if vr in ("SL", "SS", "US", "UL"):
        return int(number)
    return float(number)


def derived_private(source: Dataset) -> tuple[DerivedPrivate, ...]:
    """The allow-listed private elements of ``source`` with their values for a derived slice.

    A derived slice holds Bq/ml (stored value x its own RescaleSlope): a factor per rescaled
    value of the source is divided by the activity factor the source was read with, so Philips'
    SUV = stored x slope x (7053,1000) still holds, and (7053,1009) becomes 1. An element whose
    value cannot be read (or recomputed) is left out rather than copied wrong.
    """
    kept = vendor_profile(source).kept_private
    if not kept:
        return ()
    # Each block looked up once: pydicom's private_block decodes the group's creators each time.
    numbers = _private_numbers(source, [row.element for row in kept])
    applied: float | None
    try:
        units = activity_units(source)
    except ValidationFailed:
        applied = None
    else:
        if units.factor is None:
            applied = 1.0
        else:
            found_factor = numbers.get(units.factor, units.factor.number(source))
            applied = found_factor if found_factor is not None and found_factor > 0 else None
    found: list[DerivedPrivate] = []
    for row in kept:
        number = numbers[row.element]
        if number is None:
            continue
        if row.fixed is not None:
            number = row.fixed
        elif row.divide_by_applied_factor:
            if applied is None:
                continue
            number /= applied
        found.append(DerivedPrivate(row.element, _written(row, number)))
    return tuple(found)


def _private_numbers(
    ds: Dataset, elements: list[PrivateElement]
) -> dict[PrivateElement, float | None]:
    blocks: dict[tuple[int, str], Any] = {}
    numbers: dict[PrivateElement, float | None] = {}
    for element in elements:
        key = (element.group, element.creator)
        if key not in blocks:
            try:
                blocks[key] = ds.private_block(element.group, element.creator)
            except KeyError:
                blocks[key] = None
        value = None
        if blocks[key] is not None:
            try:
                value = blocks[key][element.offset].value
            except KeyError:
                value = None
        numbers[element] = _number(value, element.vr)
    return numbers


def derived_units(source: Dataset) -> str | None:
    """The Units of a derived slice when they differ from the source's: counts became Bq/ml."""
    try:
        row = activity_units(source)
    except ValidationFailed:
        return None
    return BQML if row.factor is not None else None
