"""Iterations/subsets from each vendor's rule: ReconstructionMethod text or GE private tags."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from petray.imaging.recon import (
    FALLBACK_RULE,
    GEMS_PETD,
    VENDOR_RULES,
    parse_iterations_subsets,
    vendor_rule,
)


def make_ds(manufacturer: str | None, method: str | None = None) -> Dataset:
    ds = Dataset()
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    if method is not None:
        ds.ReconstructionMethod = method
    return ds


def add_ge_private(ds: Dataset, iterations: object, subsets: object, vr: str = "SL") -> Dataset:
    block = ds.private_block(GEMS_PETD.group, GEMS_PETD.creator, create=True)
    block.add_new(GEMS_PETD.iterations_offset, vr, iterations)
    block.add_new(GEMS_PETD.subsets_offset, vr, subsets)
    return ds


@pytest.mark.parametrize(
    ("manufacturer", "method", "expected"),
    [
        ("SIEMENS", "OSEM3D 4i16s", (4, 16)),
        ("SIEMENS", "PSF+TOF 3i21s", (3, 21)),
        ("SIEMENS", "OP-OSEM3i21s", (3, 21)),
        ("SIEMENS", "PSF+TOF 4i5s", (4, 5)),
        ("CPS", "OSEM2D 4i8s", (4, 8)),
        ("SIEMENS", "FBP", (0, 0)),
        ("Philips Medical Systems", "BLOB-OS-TF 3i33s", (3, 33)),
        ("Philips", "3D-RAMLA", (0, 0)),
        ("MEDISO", "TeraTomo3D 8i6s", (8, 6)),
        ("Mediso Ltd.", "Tera-Tomo 3D, 4i x 6s", (4, 6)),
        ("UIH", "OSEM 2i20s", (2, 20)),
        ("United Imaging Healthcare", "OSEM iterations 3 subsets 20", (3, 20)),
        ("UIH", "TOF-OSEM Iter: 2, Subsets: 10", (2, 10)),
        ("GE MEDICAL SYSTEMS", "VPFXS", (0, 0)),
        ("GE MEDICAL SYSTEMS", "OSEM 2i 24s", (2, 24)),  # text is the GE fallback
        ("Acme PET", "OSEM 5i10s", (5, 10)),
        (None, "OSEM 5i10s", (5, 10)),
        ("SIEMENS", None, (0, 0)),
        ("SIEMENS", "OSEM 0i16s", (0, 0)),
    ],
)
def test_text_rules(
    manufacturer: str | None, method: str | None, expected: tuple[int, int]
) -> None:
    assert parse_iterations_subsets(make_ds(manufacturer, method)) == expected


def test_ge_private_tags() -> None:
    ds = add_ge_private(make_ds("GE MEDICAL SYSTEMS", "VPFX"), 3, 16)
    assert parse_iterations_subsets(ds) == (3, 16)


def test_ge_private_tags_win_over_text() -> None:
    ds = add_ge_private(make_ds("GE MEDICAL SYSTEMS", "OSEM 9i9s"), 2, 24)
    assert parse_iterations_subsets(ds) == (2, 24)


def test_ge_private_tags_read_as_raw_bytes() -> None:
    # A PACS that forwarded the private block without its dictionary leaves VR UN bytes.
    ds = add_ge_private(
        make_ds("GE MEDICAL SYSTEMS", "VPFX"),
        (4).to_bytes(4, "little"),
        (12).to_bytes(4, "little"),
        vr="UN",
    )
    assert parse_iterations_subsets(ds) == (4, 12)


def test_ge_private_block_of_another_creator_is_ignored() -> None:
    ds = make_ds("GE MEDICAL SYSTEMS", "VPFX")
    block = ds.private_block(GEMS_PETD.group, "SOMEONE_ELSE", create=True)
    block.add_new(GEMS_PETD.iterations_offset, "SL", 3)
    block.add_new(GEMS_PETD.subsets_offset, "SL", 16)
    assert parse_iterations_subsets(ds) == (0, 0)


def test_ge_private_tags_are_only_read_for_ge() -> None:
    ds = add_ge_private(make_ds("SIEMENS", "FBP"), 3, 16)
    assert parse_iterations_subsets(ds) == (0, 0)


@pytest.mark.parametrize(
    ("manufacturer", "vendor"),
    [
        ("SIEMENS", "siemens"),
        ("CPS", "siemens"),
        ("GE MEDICAL SYSTEMS", "ge"),
        ("GE Healthcare", "ge"),
        ("Philips", "philips"),
        ("MEDISO", "mediso"),
        ("UIH", "uih"),
        ("United Imaging Healthcare", "uih"),
        ("Gemini Corp", "other"),  # "ge" only as a whole word
        ("", "other"),
    ],
)
def test_vendor_rule_by_manufacturer(manufacturer: str, vendor: str) -> None:
    assert vendor_rule(manufacturer).vendor == vendor


def test_rules_are_data() -> None:
    vendors = [rule.vendor for rule in VENDOR_RULES]
    assert len(vendors) == len(set(vendors))
    assert FALLBACK_RULE.vendor not in vendors
    assert all(rule.text_patterns for rule in VENDOR_RULES)


def test_synthetic_series_of_each_vendor() -> None:
    synth = pytest.importorskip("petray.demo.synth")
    for vendor, flavour in synth.VENDORS.items():
        ds = synth.make_pet_series(slices=1, rows=8, cols=8, vendor=vendor)[0]
        assert parse_iterations_subsets(ds) == (flavour.iterations, flavour.subsets), vendor
