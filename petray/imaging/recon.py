"""Reconstruction iterations and subsets, read per vendor from a table of rules (issue 3).

Vendors write them in different places: Siemens/CPS, Philips, Mediso and UIH spell them in the
ReconstructionMethod text ("OSEM3D 4i16s", "BLOB-OS-TF 3i33s", "TeraTomo3D 8i6s"), GE keeps them
in private elements of the GEMS_PETD_01 block. A new vendor is a new row, not a new branch.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pydicom import Dataset

logger = logging.getLogger(__name__)

UNKNOWN = (0, 0)

# "4i16s", "3i21s", "8 i 6 s", "4i x 6s", "4it 16ss": the compact notation scanners print.
_COMPACT = re.compile(
    r"(?<![0-9])(\d{1,3})\s*(?:iterations?|iters?|it|i)\s*[x\u00d7,/]?\s*(\d{1,3})\s*"
    r"(?:subsets?|subs?|ss|s)(?![a-z])",
    re.IGNORECASE,
)
# "iterations 2 subsets 20", "Iter: 3, Subsets: 12": the spelled-out notation.
_SPELLED = re.compile(
    r"iter(?:ations?|s)?\s*[:=]?\s*(\d{1,3})\D{0,12}?sub(?:sets?|s)?\s*[:=]?\s*(\d{1,3})",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PrivateReconTags:
    """Where a vendor keeps iterations and subsets in a private block (PS3.5 7.8.1)."""

    group: int
    creator: str
    iterations_offset: int
    subsets_offset: int


@dataclass(frozen=True)
class VendorRule:
    vendor: str
    manufacturer: re.Pattern[str]
    text_patterns: tuple[re.Pattern[str], ...] = ()
    private: PrivateReconTags | None = None


GEMS_PETD = PrivateReconTags(
    group=0x0009, creator="GEMS_PETD_01", iterations_offset=0xB2, subsets_offset=0xB3
)

VENDOR_RULES: tuple[VendorRule, ...] = (
    VendorRule("siemens", re.compile(r"siemens|\bcps\b|\bcti\b", re.I), (_COMPACT, _SPELLED)),
    VendorRule(
        "ge", re.compile(r"\bge\b|general electric|gems", re.I), (_COMPACT, _SPELLED), GEMS_PETD
    ),
    VendorRule("philips", re.compile(r"philips", re.I), (_COMPACT, _SPELLED)),
    VendorRule("mediso", re.compile(r"mediso", re.I), (_COMPACT, _SPELLED)),
    VendorRule("uih", re.compile(r"\buih\b|united imaging", re.I), (_SPELLED, _COMPACT)),
)
# Any other manufacturer: the notations above are common enough to be worth trying.
FALLBACK_RULE = VendorRule("other", re.compile(r".*"), (_COMPACT, _SPELLED))


def vendor_rule(manufacturer: str) -> VendorRule:
    for rule in VENDOR_RULES:
        if rule.manufacturer.search(manufacturer):
            return rule
    return FALLBACK_RULE


def _as_count(value: object) -> int:
    # Private elements without a dictionary entry arrive as raw bytes (VR UN) or text.
    if isinstance(value, bytes):
        if len(value) == 4:
            return max(int.from_bytes(value, "little", signed=True), 0)
        value = value.decode("ascii", "ignore").strip("\x00 ")
    try:
        return max(int(float(str(value).strip())), 0)
    except ValueError:
        return 0


def _from_private(ds: Dataset, tags: PrivateReconTags) -> tuple[int, int]:
    try:
        block = ds.private_block(tags.group, tags.creator)
        iterations = _as_count(block[tags.iterations_offset].value)
        subsets = _as_count(block[tags.subsets_offset].value)
    except KeyError:
        return UNKNOWN
    return (iterations, subsets) if iterations and subsets else UNKNOWN


def _from_text(text: str, patterns: tuple[re.Pattern[str], ...]) -> tuple[int, int]:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            iterations, subsets = int(match.group(1)), int(match.group(2))
            if iterations and subsets:
                return iterations, subsets
    return UNKNOWN


def parse_iterations_subsets(ds: Dataset) -> tuple[int, int]:
    """(iterations, subsets) of the reconstruction, or (0, 0) when the header does not say."""
    rule = vendor_rule(str(ds.get("Manufacturer", "") or ""))
    if rule.private is not None:
        found = _from_private(ds, rule.private)
        if found != UNKNOWN:
            return found
    method = str(ds.get("ReconstructionMethod", "") or "")
    found = _from_text(method, rule.text_patterns)
    if found == UNKNOWN:
        logger.debug("no iterations/subsets found for vendor rule %s", rule.vendor)
    return found
