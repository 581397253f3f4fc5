"""SUV body-weight scale per the QIBA pseudo-code (issue 15), on headers written by hand."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from petray.imaging.suv import suv_scale

F18_HALF_LIFE_S = 6586.2


def _header(**changes: object) -> Dataset:
    ds = Dataset()
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.PatientWeight = "70"
    ds.SeriesDate = "20260315"
    ds.SeriesTime = "101500"
    item = Dataset()
    item.RadionuclideTotalDose = "370000000"  # 370 MBq
    item.RadiopharmaceuticalStartTime = "091500"  # one hour before the series
    item.RadionuclideHalfLife = str(F18_HALF_LIFE_S)
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_start_decays_the_dose_to_the_series_time() -> None:
    # 370 MBq x 2^(-3600/6586.2) = 253.32 MBq at the scan; 70 000 g / 253.32e6 Bq.
    scale = suv_scale(_header(), half_life_s=None)
    assert scale.reason == ""
    assert scale.factor == pytest.approx(2.7633e-4, rel=1e-3)
    assert scale.decay_correction == "START"


def test_admin_uses_the_dose_as_injected() -> None:
    scale = suv_scale(_header(DecayCorrection="ADMIN"), half_life_s=None)
    assert scale.factor == pytest.approx(70_000 / 370e6)


def test_table_half_life_when_the_header_has_none() -> None:
    ds = _header()
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife
    assert suv_scale(ds, half_life_s=None).reason == "no half-life"
    assert suv_scale(ds, half_life_s=F18_HALF_LIFE_S).factor == pytest.approx(2.7633e-4, rel=1e-3)


def test_reprocessed_ge_series_uses_the_private_scan_time() -> None:
    # GE rewrote SeriesTime to 12:00 when re-processing; the scan started at 10:15.
    ds = _header(SeriesTime="120000")
    block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
    block.add_new(0x0D, "DT", "20260315101500")
    earliest = datetime(2026, 3, 15, 10, 15, 30)
    assert suv_scale(ds, half_life_s=None, earliest_acquisition=earliest).factor == pytest.approx(
        2.7633e-4, rel=1e-3
    )
    # Without GE's private time, the earliest acquisition time stands in (30 s later).
    plain = _header(SeriesTime="120000")
    later = suv_scale(plain, half_life_s=None, earliest_acquisition=earliest).factor
    assert later == pytest.approx(70_000 / (370e6 * 2 ** (-3630 / F18_HALF_LIFE_S)))
    # Not knowing the acquisition times, the series time is all there is.
    assert suv_scale(plain, half_life_s=None).factor == pytest.approx(
        70_000 / (370e6 * 2 ** (-9900 / F18_HALF_LIFE_S))
    )


def test_philips_counts_without_a_dose_use_philips_own_factors() -> None:
    ds = _header(Units="CNTS")
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.000864")  # SUV per count
    block.add_new(0x09, "DS", "3.2")  # Bq/ml per count
    assert suv_scale(ds, half_life_s=None).factor == pytest.approx(0.000864 / 3.2)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"PatientWeight": None}, "no weight"),
        ({"PatientWeight": "0"}, "no weight"),
        ({"Units": "GML"}, "pixels are already SUV (Units GML)"),
        ({"DecayCorrection": "NONE"}, "decay correction 'NONE' is not START/ADMIN"),
        ({"SeriesDate": None}, "no acquisition time"),
    ],
)
def test_no_suv_says_why(changes: dict[str, object], reason: str) -> None:
    scale = suv_scale(_header(**changes), half_life_s=F18_HALF_LIFE_S)
    assert scale.factor is None
    assert scale.reason == reason


def test_injection_after_the_scan_has_no_suv() -> None:
    ds = _header()
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20260315110000"
    assert suv_scale(ds, half_life_s=None).reason == "injection after the acquisition start"


def test_injection_time_alone_before_midnight() -> None:
    # A scan at 00:30 of an injection at 23:30 given as a time only: the day before, one hour.
    ds = _header(SeriesTime="003000")
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "233000"
    assert suv_scale(ds, half_life_s=None).factor == pytest.approx(2.7633e-4, rel=1e-3)
