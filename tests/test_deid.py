"""Per-task date shifts and the identifying values the upload scan looks for."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from petray.imaging.deid import (
    IDENTIFYING_KEYWORDS,
    MAX_SHIFT_DAYS,
    MIN_SHIFT_DAYS,
    choose_date_shift_days,
    identifying_values,
)


def make_ds() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Garcia^Maria^Luisa"
    ds.PatientID = "HC-123456"
    ds.PatientBirthDate = "19580214"
    ds.OtherPatientIDs = ["OLD-777", "OLD-888"]
    ds.AccessionNumber = "ACC-2025-99"
    ds.InstitutionName = "Hospital Central"
    ds.InstitutionAddress = "Calle Mayor 1"
    ds.ReferringPhysicianName = ""
    ds.StudyInstanceUID = "1.2.3.4.100"
    ds.SeriesInstanceUID = "1.2.3.4.200"
    ds.SOPInstanceUID = "1.2.3.4.300"
    ds.FrameOfReferenceUID = "1.2.3.4.400"
    ds.StudyID = "7"
    ds.StudyDate = "20250302"
    ds.Modality = "PT"
    ds.SeriesDescription = "PET WB"
    return ds


def test_shift_is_deterministic_and_in_range() -> None:
    ids = [f"task{i:04d}" for i in range(200)]
    shifts = [choose_date_shift_days(task_id) for task_id in ids]
    assert shifts == [choose_date_shift_days(task_id) for task_id in ids]
    assert all(-MAX_SHIFT_DAYS <= shift <= -MIN_SHIFT_DAYS for shift in shifts)
    assert len(set(shifts)) > 150  # spread out, not one constant


def test_identifying_keywords_cover_the_issue_list() -> None:
    assert {
        "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
        "InstitutionAddress", "ReferringPhysicianName", "OtherPatientIDs", "StudyInstanceUID",
        "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyID",
    } <= set(IDENTIFYING_KEYWORDS)  # fmt: skip


def test_identifying_values() -> None:
    values = identifying_values(make_ds())
    expected = {
        "Garcia^Maria^Luisa",
        "Garcia",
        "Maria",
        "Luisa",
        "Maria Garcia",
        "HC-123456",
        "OLD-777",
        "OLD-888",
        "ACC-2025-99",
        "Hospital Central",
        "Calle Mayor 1",
        "1.2.3.4.100",
        "1.2.3.4.200",
        "1.2.3.4.300",
        "1.2.3.4.400",
        "19580214",
        "1958-02-14",
        "14/02/1958",
        "14.02.1958",
        "2025-03-02",  # original dates must only leave the site shifted
    }
    assert expected <= values
    assert "" not in values
    assert "7" not in values  # too short to scan for meaningfully
    assert "PT" not in values and "PET WB" not in values


def test_empty_dataset_has_nothing_to_scan_for() -> None:
    assert identifying_values(Dataset()) == set()


def test_synthetic_series_values() -> None:
    synth = pytest.importorskip("petray.demo.synth")
    ds = synth.make_pet_series(slices=1, rows=8, cols=8, patient_name="Roe^Richard")[0]
    values = identifying_values(ds)
    assert {
        "Roe^Richard",
        "Richard",
        ds.PatientID,
        ds.StudyInstanceUID,
        ds.SOPInstanceUID,
    } <= values
    assert str(ds.PatientBirthDate) in values
