"""The synthetic PET generator: valid DICOM (dciodvfy), deterministic, every option exercised."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    PositronEmissionTomographyImageStorage,
    RLELossless,
)

from petray.cli import build_parser
from petray.demo.synth import (
    GE_IR_NUM_ITERATIONS,
    GE_IR_NUM_SUBSETS,
    GE_PETD_CREATOR,
    GE_PETD_GROUP,
    TRACERS,
    SynthSpec,
    compress_with_dcmtk,
    find_tracer,
    make_pet_series,
    run_synth_command,
    write_series,
)
from petray.errors import ConfigurationError

DCIODVFY = "/usr/bin/dciodvfy"
DCMCONV = "/usr/bin/dcmconv"
# dicom3tools' dictionary types these GE private elements SS; GE/pydicom use SL (kept on purpose:
# pydicom reads implicit-VR files with its own dictionary).
GE_PRIVATE_VR_WARNING = "Explicit value representation doesn't match data dictionary"

needs_dicom3tools = pytest.mark.skipif(
    shutil.which(DCIODVFY) is None, reason="Debian package dicom3tools not installed"
)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Error and warning lines of dciodvfy for one file."""
    result = subprocess.run(
        [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_valid(paths: list[Path], *, allowed_warning: str | None = None) -> None:
    assert paths
    for path in paths:
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        unexpected = [w for w in warnings if not (allowed_warning and allowed_warning in w)]
        assert unexpected == [], f"{path.name}: {unexpected}"


def rescaled(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@needs_dicom3tools
@pytest.mark.parametrize(("vendor", "allowed"), [("siemens", None), ("ge", GE_PRIVATE_VR_WARNING)])
def test_every_file_passes_dciodvfy(tmp_path: Path, vendor: str, allowed: str | None) -> None:
    paths = write_series(make_pet_series(vendor=vendor), tmp_path)
    assert len(paths) == 47
    assert_valid(paths, allowed_warning=allowed)


@needs_dicom3tools
@pytest.mark.parametrize(
    "spec",
    [
        {"vendor": "philips", "units": "CNTS"},
        {"vendor": "philips"},
        {"vendor": "siemens", "decay_correction": "ADMIN", "patient_weight": False},
        {"vendor": "siemens", "decay_correction": "NONE"},
    ],
)
def test_vendor_export_flavours_pass_dciodvfy(tmp_path: Path, spec: dict[str, object]) -> None:
    datasets = make_pet_series(slices=3, rows=16, cols=16, **spec)  # type: ignore[arg-type]
    assert_valid(write_series(datasets, tmp_path))


@needs_dicom3tools
@pytest.mark.parametrize("tracer", [t.name for t in TRACERS])
def test_every_tracer_passes_dciodvfy(tmp_path: Path, tracer: str) -> None:
    paths = write_series(
        make_pet_series(slices=2, rows=32, cols=32, radiopharmaceutical=tracer), tmp_path
    )
    assert_valid(paths)


@needs_dicom3tools
def test_without_number_of_slices_only_that_type_1_attribute_is_reported(tmp_path: Path) -> None:
    # NumberOfSlices is Type 1 in the PET Series module (PS3.3 C.8.9.1): leaving it out, as some
    # senders do, is exactly one error and nothing else.
    paths = write_series(make_pet_series(slices=3, number_of_slices=False), tmp_path)
    for path in paths:
        errors, _ = dciodvfy(path)
        assert len(errors) == 1 and "NumberOfSlices" in errors[0], errors
        assert "NumberOfSlices" not in pydicom.dcmread(path)


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    first = write_series(make_pet_series(slices=5, seed=7), tmp_path / "a")
    again = write_series(make_pet_series(slices=5, seed=7), tmp_path / "b")
    other = write_series(make_pet_series(slices=5, seed=8), tmp_path / "c")
    assert [p.name for p in first] == [p.name for p in again]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert not {p.name for p in first} & {p.name for p in other}
    a, c = pydicom.dcmread(first[2]), pydicom.dcmread(other[2])
    assert a.StudyInstanceUID != c.StudyInstanceUID
    assert not np.array_equal(a.pixel_array, c.pixel_array)


def test_drop_leaves_out_slices_and_keeps_the_others_unchanged() -> None:
    full = make_pet_series(slices=10, seed=3)
    dropped = make_pet_series(slices=10, seed=3, drop=frozenset({0, 4}))
    assert len(dropped) == 8
    assert {int(ds.InstanceNumber) for ds in dropped} == set(range(1, 11)) - {1, 5}
    assert all(int(ds.NumberOfSlices) == 10 for ds in dropped)
    by_uid = {ds.SOPInstanceUID: ds for ds in full}
    for ds in dropped:
        assert ds.PixelData == by_uid[ds.SOPInstanceUID].PixelData


def test_no_number_of_slices_option() -> None:
    series = make_pet_series(slices=4, number_of_slices=False)
    assert all("NumberOfSlices" not in ds for ds in series)
    assert all(int(ds.NumberOfSlices) == 4 for ds in make_pet_series(slices=4))


def test_siemens_numbers_from_the_feet_and_ge_from_the_head() -> None:
    for vendor, increasing in (("siemens", True), ("ge", False)):
        series = make_pet_series(slices=6, vendor=vendor)
        z = [float(ds.ImagePositionPatient[2]) for ds in series]
        assert [int(ds.InstanceNumber) for ds in series] == list(range(1, 7))
        assert [int(ds.ImageIndex) for ds in series] == list(range(1, 7))
        steps = np.diff(z)
        assert np.allclose(steps, 3.0 if increasing else -3.0), (vendor, z)
        assert all(float(ds.SliceLocation) == zi for ds, zi in zip(series, z, strict=True))


def test_vendor_reconstruction_headers() -> None:
    siemens = make_pet_series(slices=1)[0]
    assert siemens.Manufacturer == "SIEMENS"
    assert siemens.ReconstructionMethod.endswith("4i5s")
    assert (GE_PETD_GROUP, 0x0010) not in siemens
    ge = make_pet_series(slices=1, vendor="ge")[0]
    assert ge.Manufacturer == "GE MEDICAL SYSTEMS"
    assert ge.ReconstructionMethod == "VPFX"
    block = ge.private_block(GE_PETD_GROUP, GE_PETD_CREATOR)
    assert block[GE_IR_NUM_ITERATIONS].value == 3
    assert block[GE_IR_NUM_SUBSETS].value == 16


def test_pet_header_content() -> None:
    ds = make_pet_series(slices=3, patient_id="PID42", patient_name="Roe^Richard")[1]
    assert ds.SOPClassUID == PositronEmissionTomographyImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "PT" and ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert ds.PatientID == "PID42" and str(ds.PatientName) == "Roe^Richard"
    assert float(ds.PatientWeight) > 40 and 1.4 < float(ds.PatientSize) < 2.1
    assert ds.PatientAge.endswith("Y") and len(ds.PatientBirthDate) == 8
    assert ds.pixel_array.dtype == np.int16
    info = ds.RadiopharmaceuticalInformationSequence[0]
    assert info.RadionuclideCodeSequence[0].CodeValue == "77004003"
    assert info.RadiopharmaceuticalCodeSequence[0].CodeValue == "35321007"
    assert float(info.RadionuclideHalfLife) == pytest.approx(6586.2)
    assert float(info.RadionuclideTotalDose) == pytest.approx(300e6)
    assert info.RadiopharmaceuticalStartDateTime.startswith(ds.StudyDate)
    assert float(ds.DecayFactor) >= 1.0 and float(ds.FrameReferenceTime) > 0


def test_pixel_values_are_activity_concentrations_with_hot_lesions() -> None:
    spec = SynthSpec(slices=47, rows=64, cols=64)
    series = make_pet_series(spec)
    volume = np.stack([rescaled(ds) for ds in series])
    ds = series[0]
    info = ds.RadiopharmaceuticalInformationSequence[0]
    tracer = find_tracer(spec.radiopharmaceutical)
    decay = math.exp(-math.log(2) * tracer.uptake_s / float(info.RadionuclideHalfLife))
    suv1 = float(info.RadionuclideTotalDose) * decay / (float(ds.PatientWeight) * 1000)
    body = volume[volume > 0.3 * suv1]
    assert 0.7 * suv1 < np.median(body) < 1.5 * suv1  # the body is mostly at SUV ~1
    assert volume.max() > 3 * suv1  # lesions, brain or bladder are much hotter
    assert volume.min() >= 0
    for ds in series:  # each slice uses its own slope and fills the int16 range
        assert ds.pixel_array.max() > 30000


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLossless,
    ],
)
def test_transfer_syntaxes_decode_to_the_same_pixels(tmp_path: Path, syntax: str) -> None:
    reference = make_pet_series(slices=3, rows=48, cols=48)
    paths = write_series(
        make_pet_series(slices=3, rows=48, cols=48, transfer_syntax=syntax), tmp_path
    )
    for path, ref in zip(paths, reference, strict=True):
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == syntax
        assert back.SOPInstanceUID == ref.SOPInstanceUID
        assert np.array_equal(back.pixel_array, ref.pixel_array)
    if shutil.which(DCIODVFY) is None:
        return
    if syntax == DeflatedExplicitVRLittleEndian:
        # Debian's dciodvfy cannot inflate; DCMTK re-encodes the same data set explicitly.
        inflated = tmp_path / "inflated.dcm"
        subprocess.run([DCMCONV, "+te", str(paths[0]), str(inflated)], check=True)
        paths = [inflated]
    assert_valid(paths)


def test_compress_with_dcmtk_keeps_the_instance(tmp_path: Path) -> None:
    [src] = write_series(make_pet_series(slices=1, rows=32, cols=32), tmp_path / "in")
    out = compress_with_dcmtk(src, tmp_path / "out.dcm")
    original, compressed = pydicom.dcmread(src), pydicom.dcmread(out)
    assert compressed.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert compressed.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(compressed.pixel_array, original.pixel_array)
    with pytest.raises(ConfigurationError):
        compress_with_dcmtk(src, tmp_path / "x.dcm", syntax=RLELossless)


def test_tracer_table_and_lookup() -> None:
    assert find_tracer("psma").name == "PSMA-11"
    assert find_tracer("PSMA-11").nuclide.name == "Ga-68"
    assert find_tracer("PSMA-1007").nuclide.name == "F-18"
    assert find_tracer("dotatate").nuclide.name == "Ga-68"
    assert find_tracer("rb82").nuclide.half_life_s == pytest.approx(76.38)
    assert find_tracer("Ammonia").nuclide.name == "N-13"
    assert find_tracer("water").nuclide.half_life_s == pytest.approx(122.24)
    for name in ("FDG", "FLT", "NaF", "Choline", "FDOPA", "Florbetapir"):
        assert find_tracer(name).name == name
    with pytest.raises(ConfigurationError):
        find_tracer("FD")  # whole names only, never a substring
    ds = make_pet_series(slices=1, radiopharmaceutical="Rb-82")[0]
    info = ds.RadiopharmaceuticalInformationSequence[0]
    assert info.RadionuclideCodeSequence[0].CodeValue == "79197006"
    assert float(info.RadionuclideHalfLife) == pytest.approx(76.38)


@pytest.mark.parametrize(
    "overrides",
    [
        {"vendor": "toshiba"},
        {"units": "CNTS"},  # counts only in the philips flavour
        {"decay_correction": "LATER"},
        {"radiopharmaceutical": "unobtainium"},
        {"drop": frozenset({99})},
        {"slices": 0},
        {"transfer_syntax": "1.2.840.10008.1.2.4.50"},
        {"series_instance_uid": "1.2.3/../4"},
    ],
)
def test_invalid_specs_fail_at_once(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        make_pet_series(**overrides)


def test_uid_overrides_and_file_names_carry_no_patient_data(tmp_path: Path) -> None:
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    datasets = make_pet_series(
        slices=2, study_instance_uid=study, series_instance_uid=series, patient_id="SECRET123"
    )
    assert {ds.StudyInstanceUID for ds in datasets} == {study}
    assert {ds.SeriesInstanceUID for ds in datasets} == {series}
    paths = write_series(datasets, tmp_path)
    assert all("SECRET" not in p.name and "Doe" not in p.name for p in paths)
    assert [p.name.split("_")[1][:-4] for p in paths] == [ds.SOPInstanceUID for ds in datasets]


def test_synth_command(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            *("synth", str(tmp_path), "--slices", "6", "--rows", "32", "--cols", "32"),
            *("--vendor", "ge", "--drop", "1,2", "--no-number-of-slices"),
            *("--radiopharmaceutical", "NaF", "--seed", "5"),
        ]
    )
    assert run_synth_command(args) == 0
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == 4
    ds = pydicom.dcmread(files[0])
    assert ds.Manufacturer == "GE MEDICAL SYSTEMS" and "NumberOfSlices" not in ds
    info = ds.RadiopharmaceuticalInformationSequence[0]
    assert info.RadiopharmaceuticalCodeSequence[0].CodeValue == "129501009"
    bad = build_parser().parse_args(["synth", str(tmp_path), "--drop", "a,b"])
    with pytest.raises(ConfigurationError):
        run_synth_command(bad)


def test_default_transfer_syntax_is_explicit_vr_little_endian() -> None:
    ds = make_pet_series(slices=1)[0]
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
