"""The processing header: every validation reason, time and body-measure handling, payloads."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from petray.demo.synth import make_pet_series
from petray.errors import ValidationFailed
from petray.imaging.reconstruction import RECONSTRUCTION_FIELDS
from petray.stages.validation import (
    ProcessingHeader,
    build_processing_header,
    check_model_payload,
    processing_metadata,
)

PATIENT_NAME = "Secret^Patient"


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_ds() -> Dataset:
    """A minimal PET header the service can process (Siemens style)."""
    ds = Dataset()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "ID-SECRET-1"
    ds.PatientBirthDate = "19600310"
    ds.PatientAge = "065Y"
    ds.PatientWeight = "72.5"
    ds.PatientSize = "1.75"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Biograph Vision 600"
    ds.ReconstructionMethod = "PSF+TOF 3i21s"
    ds.SeriesDate = "20250302"
    ds.SeriesTime = "101500"
    ds.StudyDate = "20250302"
    ds.PixelSpacing = [4.0, 4.0]
    ds.SliceThickness = "3.0"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-350, -350, -100]
    ds.RescaleSlope = "0.5"
    ds.RescaleIntercept = "0"
    ds.Units = "BQML"
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalStartDateTime = "20250302091500"
    item.RadionuclideTotalDose = "300000000"
    item.RadionuclideHalfLife = "6586.2"
    item.RadiopharmaceuticalCodeSequence = Sequence([code_item("C-B1031", "SRT", "FDG")])
    item.RadionuclideCodeSequence = Sequence([code_item("C-111A1", "SRT", "^18^Fluorine")])
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    return ds


def build(ds: Dataset, slice_spacing_mm: float = 2.0) -> ProcessingHeader:
    return build_processing_header(ds, slice_spacing_mm=slice_spacing_mm)


def rp_item(ds: Dataset) -> Dataset:
    item: Dataset = ds.RadiopharmaceuticalInformationSequence[0]
    return item


def test_complete_header() -> None:
    header = build(make_ds())
    assert header == ProcessingHeader(
        manufacturer_model_name="Biograph Vision 600",
        reconstruction_method="PSF+TOF 3i21s",
        iterations=3,
        subsets=21,
        voxel_spacing_mm=(4.0, 4.0, 2.0),
        slice_thickness_mm=3.0,
        radiopharmaceutical="FDG",
        half_life_s=6586.2,
        dose_mbq=300.0,
        radiopharmaceutical_start=datetime(2025, 3, 2, 9, 15),
        acquisition_start=datetime(2025, 3, 2, 10, 15),
        weight_kg=72.5,
        height_cm=175.0,
        age_years=65,
        # No reconstruction detail in this minimal header: every field there, null.
        reconstruction=dict.fromkeys(RECONSTRUCTION_FIELDS),
    )


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        delattr(ds, keyword)

    return mutate


def _delete_item(keyword: str) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        delattr(rp_item(ds), keyword)

    return mutate


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return mutate


def _no_radiopharmaceutical(ds: Dataset) -> None:
    for keyword in ("Radiopharmaceutical", "RadiopharmaceuticalCodeSequence"):
        delattr(rp_item(ds), keyword)


def _no_injection_time(ds: Dataset) -> None:
    delattr(rp_item(ds), "RadiopharmaceuticalStartDateTime")


def _unknown_tracer(ds: Dataset) -> None:
    item = rp_item(ds)
    item.Radiopharmaceutical = "FDGX"
    del item.RadiopharmaceuticalCodeSequence


def _late_injection(ds: Dataset) -> None:
    rp_item(ds).RadiopharmaceuticalStartDateTime = "20250302110000"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_delete("ManufacturerModelName"), "scanner model (ManufacturerModelName) missing"),
        (_delete("ReconstructionMethod"), "reconstruction method (ReconstructionMethod) missing"),
        (_delete("PixelSpacing"), "pixel spacing (PixelSpacing) missing"),
        (_set("PixelSpacing", [0, 4]), "pixel spacing (PixelSpacing) missing or invalid"),
        (_delete("SliceThickness"), "slice thickness (SliceThickness) missing"),
        (_delete("ImageOrientationPatient"), "orientation (ImageOrientationPatient) missing"),
        (
            _set("ImageOrientationPatient", [1, 0, 0, 1, 0, 0]),
            "orientation (ImageOrientationPatient) is not orthonormal",
        ),
        (_delete("ImagePositionPatient"), "position (ImagePositionPatient) missing"),
        (_delete("RescaleSlope"), "rescale slope (RescaleSlope) missing"),
        (_set("RescaleSlope", "0"), "rescale slope (RescaleSlope) missing or not positive"),
        (_delete("RescaleIntercept"), "rescale intercept (RescaleIntercept) missing"),
        (_set("Units", "CNTS"), "units (Units) must be BQML, got 'CNTS'"),
        (_set("DecayCorrection", "LATER"), "decay correction (DecayCorrection) must be one of"),
        (_delete("SeriesTime"), "acquisition start (SeriesDate/SeriesTime) missing"),
        (
            _delete("RadiopharmaceuticalInformationSequence"),
            "radiopharmaceutical sequence (RadiopharmaceuticalInformationSequence) missing",
        ),
        (_no_radiopharmaceutical, "radiopharmaceutical (Radiopharmaceutical, "),
        (_unknown_tracer, "unknown radiopharmaceutical 'FDGX'"),
        (_no_injection_time, "injection time (RadiopharmaceuticalStartDateTime/StartTime) missing"),
        (_delete_item("RadionuclideTotalDose"), "injected dose (RadionuclideTotalDose) missing"),
        (_late_injection, "injection time is after the acquisition start"),
    ],
)
def test_each_validation_reason(mutate: Callable[[Dataset], None], reason: str) -> None:
    ds = make_ds()
    mutate(ds)
    with pytest.raises(ValidationFailed) as failure:
        build(ds)
    message = str(failure.value)
    assert message.startswith("header incomplete: ")
    assert reason in message
    assert "Secret" not in message and "ID-SECRET" not in message


@pytest.mark.parametrize("spacing", [0.0, -3.0, float("nan")])
def test_slice_spacing_must_be_positive(spacing: float) -> None:
    with pytest.raises(ValidationFailed, match="slice spacing missing or not positive"):
        build(make_ds(), slice_spacing_mm=spacing)


def test_every_problem_is_reported_at_once() -> None:
    ds = make_ds()
    del ds.PatientWeight
    del ds.PixelSpacing
    with pytest.raises(ValidationFailed) as failure:
        build_processing_header(ds, slice_spacing_mm=2.0, require_patient_weight=True)
    assert "PatientWeight" in str(failure.value) and "PixelSpacing" in str(failure.value)


def test_tracer_found_by_code_meaning_when_text_is_unknown() -> None:
    ds = make_ds()
    item = rp_item(ds)
    item.Radiopharmaceutical = "site tracer 7"
    item.RadiopharmaceuticalCodeSequence = Sequence(
        [code_item("LOCAL7", "99SITE", "Fluorodeoxyglucose F^18^")]
    )
    assert build(ds).radiopharmaceutical == "FDG"


def test_radionuclide_code_picks_the_psma_ligand() -> None:
    ds = make_ds()
    item = rp_item(ds)
    item.Radiopharmaceutical = "PSMA"
    del item.RadiopharmaceuticalCodeSequence
    item.RadionuclideCodeSequence = Sequence([code_item("35337001", "SCT", "^68^Gallium")])
    header = build(ds)
    assert (header.radiopharmaceutical, header.half_life_s) == ("PSMA-11", 4057.7)


def test_start_time_with_series_date() -> None:
    ds = make_ds()
    item = rp_item(ds)
    del item.RadiopharmaceuticalStartDateTime
    item.RadiopharmaceuticalStartTime = "091500.00"
    assert build(ds).radiopharmaceutical_start == datetime(2025, 3, 2, 9, 15)


def test_start_time_before_midnight_for_a_scan_after_it() -> None:
    ds = make_ds()
    ds.SeriesTime = "003000"
    item = rp_item(ds)
    del item.RadiopharmaceuticalStartDateTime
    item.RadiopharmaceuticalStartTime = "233000"
    header = build(ds)
    assert header.acquisition_start - header.radiopharmaceutical_start == timedelta(hours=1)


def test_acquisition_datetime_when_series_time_is_absent() -> None:
    ds = make_ds()
    del ds.SeriesDate, ds.SeriesTime
    ds.AcquisitionDateTime = "20250302102000+0100"
    assert build(ds).acquisition_start == datetime(2025, 3, 2, 10, 20)


@pytest.mark.parametrize(("age", "years"), [("065Y", 65), ("006M", 0), ("010W", 0), ("003D", 0)])
def test_age_from_patient_age(age: str, years: int) -> None:
    ds = make_ds()
    ds.PatientAge = age
    assert build(ds).age_years == years


@pytest.mark.parametrize(
    ("birth", "years"), [("19600310", 64), ("19600302", 65), ("19600301", 65), ("", None)]
)
def test_age_from_birth_date(birth: str, years: int | None) -> None:
    ds = make_ds()
    del ds.PatientAge
    ds.PatientBirthDate = birth
    assert build(ds).age_years == years


@pytest.mark.parametrize(("size", "cm"), [("1.75", 175.0), ("175", 175.0), ("", None)])
def test_height_in_centimetres(size: str, cm: float | None) -> None:
    ds = make_ds()
    ds.PatientSize = size
    height = build(ds).height_cm
    assert height == (None if cm is None else pytest.approx(cm))


def test_check_model_payload_uses_the_protocol_names() -> None:
    payload = check_model_payload(build(make_ds()), client_id="site-7")
    assert payload == {
        "id_client": "site-7",
        "ManufacturerModelName": "Biograph Vision 600",
        "ReconstructionMethod": "PSF+TOF 3i21s",
        "Iteraciones": 3,
        "Subsets": 21,
        "VoxelSpacing": [4.0, 4.0, 2.0],
        "SliceThickness": 3.0,
        "Radiofarmaco": "FDG",
        "HalfLife": 6586.2,
    }


def test_processing_metadata_fields_and_date_shift() -> None:
    header = build(make_ds())
    metadata = processing_metadata(header, date_shift_days=-400)
    model_fields = check_model_payload(header, client_id="x")
    del model_fields["id_client"]
    assert set(metadata) == set(model_fields) | {
        "radiopharmaceutical_dose",
        "radiopharmaceutical_start",
        "acquisition_start",
        "weight",
        "height",
        "age",
        "reconstruction",
    }
    assert {key: metadata[key] for key in model_fields} == model_fields
    assert metadata["radiopharmaceutical_start"] == "2024-01-27 09:15:00"
    assert metadata["acquisition_start"] == "2024-01-27 10:15:00"
    assert (metadata["radiopharmaceutical_dose"], metadata["weight"]) == (300.0, 72.5)
    assert (metadata["height"], metadata["age"]) == (175.0, 65)


@pytest.mark.parametrize("shift", [-365, -1000, -3650])
def test_date_shift_keeps_intervals(shift: int) -> None:
    header = build(make_ds())
    metadata = processing_metadata(header, date_shift_days=shift)
    start = datetime.strptime(metadata["radiopharmaceutical_start"], "%Y-%m-%d %H:%M:%S")
    acquisition = datetime.strptime(metadata["acquisition_start"], "%Y-%m-%d %H:%M:%S")
    assert acquisition - start == header.acquisition_start - header.radiopharmaceutical_start
    assert (header.acquisition_start - acquisition).days == -shift


def test_synthetic_series_validate_for_every_vendor_and_tracer() -> None:
    synth = pytest.importorskip("petray.demo.synth")
    for vendor in synth.VENDORS:
        for tracer in synth.TRACERS:
            series = synth.make_pet_series(
                slices=1, rows=8, cols=8, vendor=vendor, radiopharmaceutical=tracer.name
            )
            header = build(series[0], slice_spacing_mm=3.0)
            assert header.radiopharmaceutical == tracer.name, (vendor, tracer.name)
            assert header.dose_mbq == pytest.approx(tracer.dose_mbq)
            assert header.acquisition_start > header.radiopharmaceutical_start


def test_dynamic_series_are_refused_with_a_clear_reason() -> None:
    ds = make_pet_series(slices=4, rows=16, cols=16)[0]
    ds.SeriesType = ["DYNAMIC", "IMAGE"]
    ds.NumberOfTimeSlices = 3
    with pytest.raises(ValidationFailed, match="DYNAMIC PET series are not supported"):
        build_processing_header(ds, slice_spacing_mm=3.0)


def test_reconstruction_details_of_each_vendor() -> None:
    ge = make_pet_series(slices=1, rows=8, cols=8, vendor="ge")[0]
    details = processing_metadata(build(ge), date_shift_days=-400)["reconstruction"]
    assert list(details) == list(RECONSTRUCTION_FIELDS)
    assert details["ConvolutionKernel"] == str(ge.ConvolutionKernel)
    assert details["ActualFrameDuration"] == int(ge.ActualFrameDuration)
    assert details["AttenuationCorrectionMethod"] == str(ge.AttenuationCorrectionMethod)
    assert details["ScatterCorrectionMethod"] == str(ge.ScatterCorrectionMethod)
    assert details["DecayCorrection"] == "START"
    block = ge.private_block(0x0009, "GEMS_PETD_01")
    assert details["ScannerPostFilter"] == {
        "GEMS_PETD_01": {
            "post_filter": block[0xBA].value,
            "post_filt_parm": pytest.approx(block[0xBB].value, rel=1e-6),
            "ir_z_filter_ratio": pytest.approx(block[0xDC].value, rel=1e-6),
        }
    }
    siemens = make_pet_series(slices=1, rows=8, cols=8, vendor="siemens")[0]
    assert build(siemens).reconstruction["ScannerPostFilter"] is None  # type: ignore[index]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ConvolutionKernel", "Secret^Patient"),  # a person name's separator
        ("ConvolutionKernel", "gauss " + "x" * 70),  # longer than any setting
        ("AttenuationCorrectionMethod", "measured by Patient Secret"),  # a name form
        ("ScatterCorrectionMethod", "model id-secret-1"),  # the patient id, any case
        ("ScatterCorrectionMethod", 'model "quoted"'),
    ],
)
def test_reconstruction_text_that_is_not_a_setting_is_sent_as_null(
    keyword: str, value: str
) -> None:
    ds = make_ds()
    ds.ConvolutionKernel = "XYZ Gauss2.00"
    setattr(ds, keyword, value)
    details = build(ds).reconstruction
    assert details is not None
    assert details[keyword] is None
    if keyword != "ConvolutionKernel":
        assert details["ConvolutionKernel"] == "XYZ Gauss2.00"


def test_a_number_spelling_the_patient_id_is_dropped() -> None:
    ds = make_ds()
    ds.PatientID = "7732119"
    ds.ActualFrameDuration = 7732119
    assert build(ds).reconstruction["ActualFrameDuration"] is None  # type: ignore[index]
    ds.ActualFrameDuration = 120000  # shares no five-digit run with the id
    assert build(ds).reconstruction["ActualFrameDuration"] == 120000  # type: ignore[index]
