"""Header extraction on the Store SCP hot path, and UID validation."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, EnhancedPETImageStorage

from petray.demo.synth import make_pet_series
from petray.dicom.header import MANDATORY_KEYWORDS, extract_instance_header, is_pet
from petray.dicom.uids import UID_MAX_LENGTH, is_valid_uid, validate_uid
from petray.errors import InvalidInstance


def pet_instance(**overrides: object) -> Dataset:
    return make_pet_series(slices=3, rows=16, cols=16, **overrides)[1]


def header_only(ds: Dataset) -> Dataset:
    """The instance as the SCP parses it: written, then read back without pixel data."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()), stop_before_pixels=True)


def set_raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put undecoded bytes in ``ds``, as dcmread leaves them until the element is touched."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def reason(ds: Dataset) -> str:
    with pytest.raises(InvalidInstance) as info:
        extract_instance_header(ds)
    return str(info.value)


def test_good_header() -> None:
    ds = header_only(pet_instance(patient_id="PID7", vendor="siemens"))
    assert "PixelData" not in ds
    header = extract_instance_header(ds)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.series_instance_uid == ds.SeriesInstanceUID
    assert header.modality == "PT"
    assert header.patient_id == "PID7"
    assert header.patient_name == "Doe^Jane"
    assert header.manufacturer == "SIEMENS"
    assert header.model_name == ds.ManufacturerModelName
    assert header.instance_number == 2
    assert header.number_of_slices == 3
    assert header.series_number == int(ds.SeriesNumber)
    assert (header.rows, header.columns) == (16, 16)
    assert header.slice_thickness == pytest.approx(3.0)
    assert header.slice_position == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert header.rescale_slope == pytest.approx(float(ds.RescaleSlope))
    assert header.pixel_spacing == (float(ds.PixelSpacing[0]),) * 2
    assert header.study_date == ds.StudyDate and header.accession_number == ds.AccessionNumber


def test_slice_position_follows_the_normal_not_the_z_coordinate() -> None:
    ds = pet_instance()
    # A sagittal plane: rows along -y, columns along -z, so the normal is +x.
    ds.ImageOrientationPatient = [0, -1, 0, 0, 0, -1]
    ds.ImagePositionPatient = [12.5, 30, -40]
    assert extract_instance_header(ds).slice_position == pytest.approx(12.5)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # normal -x
    assert extract_instance_header(ds).slice_position == pytest.approx(-12.5)


def test_optional_attributes_may_be_absent() -> None:
    ds = pet_instance(number_of_slices=False)
    for keyword in ("InstanceNumber", "SeriesNumber", "SliceThickness", "PatientName"):
        delattr(ds, keyword)
    header = extract_instance_header(ds)
    assert header.number_of_slices is None and header.instance_number is None
    assert header.series_number is None and header.slice_thickness is None
    assert header.patient_name == ""


@pytest.mark.parametrize("keyword", MANDATORY_KEYWORDS)
def test_each_missing_mandatory_attribute_is_named(keyword: str) -> None:
    ds = pet_instance()
    delattr(ds, keyword)
    message = reason(ds)
    assert "missing" in message and keyword in message


def test_every_problem_is_named_at_once() -> None:
    ds = pet_instance()
    for keyword in ("SOPInstanceUID", "PixelSpacing", "RescaleSlope"):
        delattr(ds, keyword)
    ds.Rows = 0
    ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
    message = reason(ds)
    for keyword in (
        "SOPInstanceUID",
        "PixelSpacing",
        "RescaleSlope",
        "Rows",
        "ImageOrientationPatient",
    ):
        assert keyword in message, message
    assert "Columns" not in message


def test_empty_values_count_as_missing() -> None:
    ds = pet_instance()
    ds.SeriesInstanceUID = ""
    ds.ImagePositionPatient = []
    message = reason(ds)
    assert "SeriesInstanceUID" in message and "ImagePositionPatient" in message


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("ImagePositionPatient", [1.0, 2.0], "needs 3 numbers"),
        ("ImagePositionPatient", [1.0, 2.0, float("nan")], "finite"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "needs 6 numbers"),
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "orthogonal"),
        ("ImageOrientationPatient", [0, 0, 0, 0, 1, 0], "unit"),
        ("ImageOrientationPatient", [2, 0, 0, 0, 1, 0], "unit"),
        ("PixelSpacing", [0, 2], "positive"),
        ("PixelSpacing", [2.0], "needs 2 numbers"),
        ("RescaleSlope", 0, "must be positive"),
        ("RescaleSlope", -1.5, "must be positive"),
        ("NumberOfSlices", 0, "positive"),
        ("Rows", 0, "positive"),
        ("SOPInstanceUID", "1.2.3/../../etc", "PS3.5"),
        ("StudyInstanceUID", "1." + "2" * 70, "64"),
        ("SeriesInstanceUID", "1.02.3", "leading zeros"),
    ],
)
def test_invalid_values_are_named(keyword: str, value: object, expected: str) -> None:
    ds = pet_instance()
    setattr(ds, keyword, value)
    message = reason(ds)
    assert keyword in message and expected in message, message


@pytest.mark.parametrize(
    ("keyword", "vr", "raw"),
    [
        ("RescaleSlope", "DS", b"abc "),
        ("Rows", "US", b"\x01\x02\x03"),
        ("ImagePositionPatient", "DS", b"1\\x\\3 "),
        ("NumberOfSlices", "US", b"\x00\x00"),
        ("InstanceNumber", "IS", b"1.5 "),
        ("SeriesInstanceUID", "UI", b"1.2.\xff\xfe"),
    ],
)
def test_garbage_bytes_become_invalid_instance(keyword: str, vr: str, raw: bytes) -> None:
    ds = pet_instance()
    set_raw(ds, keyword, vr, raw)
    message = reason(ds)
    assert keyword in message


def test_messages_do_not_repeat_values() -> None:
    ds = pet_instance()
    set_raw(ds, "RescaleSlope", "DS", b"Doe^Jane")
    ds.StudyInstanceUID = "1.2.3.SECRET"
    message = reason(ds)
    assert "Doe" not in message and "SECRET" not in message
    assert "RescaleSlope" in message and "StudyInstanceUID" in message


def test_padded_uids_are_accepted_without_padding() -> None:
    ds = pet_instance()
    set_raw(ds, "SOPInstanceUID", "UI", b"1.2.345\x00")
    assert extract_instance_header(ds).sop_instance_uid == "1.2.345"


def test_is_pet() -> None:
    ds = pet_instance()
    assert is_pet(ds) and is_pet(header_only(ds))
    ds.Modality = "CT"
    assert not is_pet(ds)
    ds = pet_instance()
    ds.SOPClassUID = CTImageStorage
    assert not is_pet(ds)
    ds.SOPClassUID = EnhancedPETImageStorage
    assert not is_pet(ds)
    ds = pet_instance()
    del ds.Modality  # still PET by SOP class: refused later with a precise reason
    assert is_pet(ds)
    assert "Modality" in reason(ds)
    ds = pet_instance()
    del ds.SOPClassUID  # the file meta still says PET Image Storage
    assert is_pet(ds)
    assert not is_pet(Dataset())


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.5.1.4.1.1.128",
        "1.2.826.0.1.3680043.8.498.1",
        "0.0",
        "2.25.329800735698586629295641978511506172918",
        "1." + "1" * (UID_MAX_LENGTH - 2),
    ],
)
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid) == uid
    assert validate_uid(uid + "\x00") == uid
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "\x00",
        "1",
        "1.2.3/../4",
        "../../etc/passwd",
        "1.2.3\\4",
        "1..2",
        ".1.2",
        "1.2.",
        "1.02",
        "01.2",
        "1.2.a",
        "1.2 .3",
        " 1.2",
        "1.2\n",
        "1." + "1" * (UID_MAX_LENGTH - 1),
        "1.2.\u0663",  # a non-ASCII digit
    ],
)
def test_invalid_uids(uid: str) -> None:
    with pytest.raises(InvalidInstance):
        validate_uid(uid)
    assert not is_valid_uid(uid)


def test_uid_must_be_text() -> None:
    with pytest.raises(InvalidInstance):
        validate_uid(12.3)  # type: ignore[arg-type]


def test_dynamic_series_expects_every_time_slice() -> None:
    # NumberOfSlices counts one frame (PS3.3 C.8.9.1): 3 time slices of 4 slices are 12 images.
    ds = make_pet_series(slices=4, rows=16, cols=16)[0]
    ds.SeriesType = ["DYNAMIC", "IMAGE"]
    ds.NumberOfTimeSlices = 3
    assert extract_instance_header(ds).number_of_slices == 12
