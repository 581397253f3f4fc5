from __future__ import annotations

import pickle
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from petray.errors import PermanentError
from petray.imaging.derive import (
    DROPPED_KEYWORDS,
    INT16_MAX,
    SeriesJob,
    instance_uid,
    prepare_templates,
    quantisation_slope,
    write_derived_series,
    write_series,
)
from petray.imaging.vendors import DEFAULT_PROFILE, VENDOR_PROFILES
from petray.imaging.volume import load_series_volume
from tests.support.peers import (
    DCENTVFY_BIN,
    DCIODVFY_BIN,
    dcentvfy_errors,
    dciodvfy_errors,
    have_tool,
    write_pet_series,
)

UID_ROOT = "1.2.826.0.1.3680043.10.1299"
SLICES, ROWS, COLS = 5, 12, 10
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711"

needs_dicom3tools = pytest.mark.skipif(
    not (have_tool(DCIODVFY_BIN) and have_tool(DCENTVFY_BIN)), reason="dicom3tools not installed"
)


def _source(directory: Path, *, compress: bool = False) -> list[Path]:
    paths = write_pet_series(directory, SLICES, rows=ROWS, cols=COLS)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.SeriesDescription = "PET WB"
        ds.private_block(0x0011, "ACME PET", create=True).add_new(0x01, "LO", "vendor secret")
        if compress:
            ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.normal(2000.0, 1500.0, size=(SLICES, ROWS, COLS)).astype(np.float32)
    volume[1] = 0.0  # an empty slice (outside the body)
    volume[2] *= 1000.0  # a hot slice: a large dynamic range
    volume[3, 0, 0] = -123.5  # denoisers can leave negative values
    return volume


def _write(volume: np.ndarray, sources: list[Path], outdir: Path, series_uid: str) -> list[Path]:
    return write_derived_series(
        volume,
        sources,
        outdir,
        series_instance_uid=series_uid,
        series_number=1001,
        series_description="PET WB Gauss 4mm",
        derivation_description="petray: denoised by test-algorithm 1.0; Gaussian FWHM 4 mm",
        uid_root=UID_ROOT,
    )


@pytest.fixture
def derived(tmp_path: Path) -> tuple[list[Path], list[Path], np.ndarray, str]:
    sources = list(load_series_volume(_source(tmp_path / "src")).slice_paths)
    volume = _volume()
    series_uid = generate_uid(prefix=f"{UID_ROOT}.")
    outputs = _write(volume, sources, tmp_path / "out", series_uid)
    return sources, outputs, volume, series_uid


@needs_dicom3tools
def test_outputs_pass_dciodvfy_and_dcentvfy(
    derived: tuple[list[Path], list[Path], np.ndarray, str],
) -> None:
    sources, outputs, _, _ = derived
    for path in outputs:
        assert dciodvfy_errors(path) == [], path.name
    assert dcentvfy_errors(outputs) == []
    # Together with the source series: same patient and study entities, no conflicts.
    assert dcentvfy_errors([*sources, *outputs]) == []


def test_values_round_trip_within_half_a_step(
    derived: tuple[list[Path], list[Path], np.ndarray, str],
) -> None:
    _, outputs, volume, _ = derived
    for z, path in enumerate(outputs):
        ds = pydicom.dcmread(path)
        slope = float(ds.RescaleSlope)
        assert float(ds.RescaleIntercept) == 0.0
        stored = ds.pixel_array
        assert stored.dtype == np.int16
        assert int(np.abs(stored).max()) <= INT16_MAX
        decoded = stored.astype(np.float64) * slope
        error = np.abs(decoded - volume[z].astype(np.float64)).max()
        assert error <= slope / 2 * (1 + 1e-6), f"slice {z}"
        if z == 1:
            assert slope == 1.0
            assert not stored.any()
        else:
            # The full int16 range is used: precision is kept, nothing clipped.
            assert int(np.abs(stored).max()) >= INT16_MAX - 1
    hot = pydicom.dcmread(outputs[2])
    assert float(hot.RescaleSlope) > 100 * float(pydicom.dcmread(outputs[0]).RescaleSlope)


def test_identity_and_new_uids(derived: tuple[list[Path], list[Path], np.ndarray, str]) -> None:
    sources, outputs, _, series_uid = derived
    sop_uids = set()
    for z, (source_path, path) in enumerate(zip(sources, outputs, strict=True)):
        source = pydicom.dcmread(source_path)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "FrameOfReferenceUID",
            "Manufacturer",
            "SeriesDate",
            "SeriesTime",
            "AcquisitionDate",
            "AcquisitionTime",
            "Units",
            "DecayCorrection",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "RadiopharmaceuticalInformationSequence",
        ):
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.SOPClassUID == source.SOPClassUID
        assert ds.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert UID(ds.SOPInstanceUID).is_valid
        assert ds.SOPInstanceUID.startswith(UID_ROOT + ".")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        sop_uids.add(ds.SOPInstanceUID)
        assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
        assert ds.DerivationDescription.startswith("petray: denoised")
        assert ds.SeriesNumber == 1001
        assert ds.SeriesDescription == "PET WB Gauss 4mm"
        assert ds.InstanceNumber == z + 1
        assert ds.ImageIndex == z + 1
        reference = ds.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert not any(elem.tag.is_private for elem in ds)
        assert "vendor secret" not in path.read_bytes().decode("latin-1")
        assert PATIENT_ID not in path.name and "Doe" not in path.name
    assert len(sop_uids) == SLICES


def test_retry_rewrites_the_same_files(tmp_path: Path) -> None:
    sources = list(load_series_volume(_source(tmp_path / "src")).slice_paths)
    series_uid = generate_uid(prefix=f"{UID_ROOT}.")
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "99999.dcm").write_bytes(b"left over by an earlier, longer attempt")
    first = _write(_volume(1), sources, outdir, series_uid)
    first_uids = [pydicom.dcmread(p).SOPInstanceUID for p in first]
    second = _write(_volume(2), sources, outdir, series_uid)
    assert second == first
    assert [pydicom.dcmread(p).SOPInstanceUID for p in second] == first_uids
    assert sorted(p.name for p in outdir.iterdir()) == sorted(p.name for p in first)
    assert first_uids[3] == instance_uid(series_uid, 3, UID_ROOT)
    assert instance_uid(series_uid, 3, UID_ROOT) != instance_uid(series_uid, 4, UID_ROOT)


@needs_dicom3tools
# The small test ramp does not shrink under RLE; pydicom warns about the coincidence.
@pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data")
def test_compressed_source_gives_uncompressed_output(tmp_path: Path) -> None:
    sources = list(load_series_volume(_source(tmp_path / "src", compress=True)).slice_paths)
    assert pydicom.dcmread(sources[0]).file_meta.TransferSyntaxUID == RLELossless
    outputs = _write(_volume(), sources, tmp_path / "out", generate_uid(prefix=f"{UID_ROOT}."))
    ds = pydicom.dcmread(outputs[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.pixel_array.shape == (ROWS, COLS)
    assert dciodvfy_errors(outputs[0]) == []


def test_invalid_arguments(tmp_path: Path) -> None:
    sources = _source(tmp_path / "src")
    source_series = pydicom.dcmread(sources[0]).SeriesInstanceUID
    with pytest.raises(ValueError, match="source files"):
        _write(_volume()[:3], sources, tmp_path / "out", generate_uid())
    with pytest.raises(ValueError, match="not a valid"):
        _write(_volume(), sources, tmp_path / "out", "1.2.abc")
    with pytest.raises(ValueError, match="new SeriesInstanceUID"):
        _write(_volume(), sources, tmp_path / "out", source_series)


@pytest.mark.parametrize("peak", [1e-7, 0.3, 1.0, 32767.0, 12345.678, 9.87654321e6, 3.4e38])
def test_quantisation_slope_never_clips(peak: float) -> None:
    plane = np.array([[0.0, -peak], [peak / 3, peak / 2]], dtype=np.float32)
    text = quantisation_slope(plane)
    assert len(text) <= 16
    actual_peak = float(np.abs(plane).max())
    assert float(text) * INT16_MAX >= actual_peak
    assert float(text) * INT16_MAX <= actual_peak * (1 + 1e-7)


def _private_elements(ds: Dataset) -> set[tuple[int, str, int]]:
    """(group, creator, offset) of every private data element, creators resolved (PS3.5 7.8.1)."""
    found: set[tuple[int, str, int]] = set()
    for elem in ds:
        tag = elem.tag
        if tag.is_private and not tag.is_private_creator:
            creator = str(ds[(tag.group << 16) | (tag.element >> 8)].value)
            found.add((tag.group, creator, tag.element & 0xFF))
    return found


def _allowed(vendor: str) -> set[tuple[int, str, int]]:
    return {
        (k.element.group, k.element.creator, k.element.offset)
        for k in VENDOR_PROFILES.get(vendor, DEFAULT_PROFILE).kept_private
    }


@needs_dicom3tools
@pytest.mark.parametrize(
    ("vendor", "syntax", "units"),
    [
        ("siemens", "1.2.840.10008.1.2.1", "BQML"),
        ("ge", "1.2.840.10008.1.2.4.70", "BQML"),
        ("philips", "1.2.840.10008.1.2", "CNTS"),
        ("philips", "1.2.840.10008.1.2.1", "BQML"),
    ],
)
def test_synthetic_vendor_series_derive_cleanly(
    tmp_path: Path, vendor: str, syntax: str, units: str
) -> None:
    from petray.demo.synth import make_pet_series, write_series

    sources = write_series(
        make_pet_series(
            slices=6, rows=32, cols=32, seed=2, vendor=vendor, transfer_syntax=syntax, units=units
        ),
        tmp_path / "src",
    )
    assert dciodvfy_errors(sources[0]) == []  # the generator's own promise: a valid source
    loaded = load_series_volume(sources)
    series_uid = generate_uid(prefix=f"{UID_ROOT}.")
    filtered = (loaded.data * np.float32(0.9)).astype(np.float32)
    outputs = _write(filtered, list(loaded.slice_paths), tmp_path / "out", series_uid)
    for path in outputs:
        assert dciodvfy_errors(path) == [], path.name
        ds = pydicom.dcmread(path)
        kept = _private_elements(ds)
        # Only the vendor's allow-list survives, and all of it that the source had.
        assert kept <= _allowed(vendor)
        assert kept == _allowed(vendor) & _private_elements(pydicom.dcmread(sources[0]))
        assert ds.Units == "BQML"  # counts or not, the derived pixels are Bq/ml
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    if vendor == "philips":
        _check_philips_suv(list(loaded.slice_paths), outputs, scale=0.9)
    assert dcentvfy_errors([*loaded.slice_paths, *outputs]) == []
    back = load_series_volume(outputs)
    np.testing.assert_array_equal(back.positions, loaded.positions)
    step = max(float(pydicom.dcmread(p).RescaleSlope) for p in outputs)
    np.testing.assert_allclose(back.data, filtered, atol=step / 2 * (1 + 1e-6))


def _philips(ds: Dataset, offset: int) -> float | None:
    try:
        return float(ds.private_block(0x7053, "Philips PET Private Group")[offset].value)
    except KeyError:
        return None


def _check_philips_suv(sources: list[Path], outputs: list[Path], *, scale: float) -> None:
    """SUV = stored x RescaleSlope x (7053,1000) gives the same SUV (times the filter's
    ``scale``) in the derived slice as in its source; (7053,1009) says 1 Bq/ml per value."""
    for source_path, output_path in zip(sources, outputs, strict=True):
        source, output = pydicom.dcmread(source_path), pydicom.dcmread(output_path)
        suv_source = source.pixel_array * float(source.RescaleSlope) * _philips(source, 0x00)
        suv_output = output.pixel_array * float(output.RescaleSlope) * _philips(output, 0x00)
        step = float(output.RescaleSlope) * _philips(output, 0x00)  # type: ignore[operator]
        np.testing.assert_allclose(suv_output, scale * suv_source, atol=step, rtol=1e-6)
        assert suv_source.max() > 1.0  # an SUV image, not a trivially equal one
        if _philips(source, 0x09) is not None:
            assert _philips(output, 0x09) == 1.0


# -- templates prepared once, series written from them ------------------------------------

FIXED_NOW = datetime(2024, 5, 6, 7, 8, 9, 123456)


def _job(outdir: Path, series_uid: str, number: int = 1001) -> SeriesJob:
    return SeriesJob(
        outdir=outdir,
        series_instance_uid=series_uid,
        series_number=number,
        series_description="PET WB Gauss 4mm",
        derivation_description="petray: denoised by test-algorithm 1.0; Gaussian FWHM 4 mm",
        uid_root=UID_ROOT,
    )


def _reference_bytes(source_path: Path, plane: np.ndarray, index: int, job: SeriesJob) -> bytes:
    """The derived file built the plain pydicom way (whole dataset, dcmwrite): the oracle."""
    ds = pydicom.dcmread(source_path, stop_before_pixels=True)
    reference = Dataset()
    reference.ReferencedSOPClassUID = ds.SOPClassUID
    reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    reference.PurposeOfReferenceCodeSequence = [purpose]
    ds.remove_private_tags()
    for elem in list(ds):
        if elem.keyword in DROPPED_KEYWORDS or 0x6000 <= elem.tag.group <= 0x60FF:
            del ds[elem.tag]
    sop_uid = instance_uid(job.series_instance_uid, index, job.uid_root)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = job.series_instance_uid
    ds.SeriesNumber = job.series_number
    ds.SeriesDescription = job.series_description
    ds.InstanceNumber = ds.ImageIndex = index + 1
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = job.derivation_description
    ds.SourceImageSequence = [reference]
    ds.ContentDate = ds.InstanceCreationDate = FIXED_NOW.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = FIXED_NOW.strftime("%H%M%S.%f")
    slope = quantisation_slope(plane)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
    stored = np.clip(np.rint(plane.astype(np.float64) / float(slope)), -INT16_MAX, INT16_MAX)
    ds.add_new("PixelData", "OW", stored.astype("<i2").tobytes())
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1]
)
def test_spliced_files_equal_plain_pydicom_output(tmp_path: Path, syntax: str) -> None:
    from petray.demo.synth import make_pet_series
    from petray.demo.synth import write_series as write_source

    spec = make_pet_series(slices=4, rows=16, cols=16, seed=3, transfer_syntax=syntax)
    paths = write_source(spec, tmp_path / "src")
    # A private element nested in a sequence must go too.
    ds = pydicom.dcmread(paths[0])
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.private_block(0x0013, "ACME NESTED", create=True).add_new(0x01, "LO", "nested secret")
    ds.save_as(paths[0])
    assert b"nested secret" in paths[0].read_bytes()
    loaded = load_series_volume(paths)
    job = _job(tmp_path / "out", generate_uid(prefix=f"{UID_ROOT}."))
    written = write_series(loaded.data, prepare_templates(loaded.slice_paths), job, now=FIXED_NOW)
    for index, (source, path) in enumerate(zip(loaded.slice_paths, written, strict=True)):
        expected = _reference_bytes(source, loaded.data[index], index, job)
        assert path.read_bytes() == expected, path.name
    assert b"nested secret" not in b"".join(p.read_bytes() for p in written)


def test_one_set_of_templates_serves_several_series(tmp_path: Path) -> None:
    sources = list(load_series_volume(_source(tmp_path / "src")).slice_paths)
    templates = prepare_templates(sources)
    pickle.loads(pickle.dumps(templates))  # they travel through the object store
    jobs = [
        _job(tmp_path / f"out{k}", generate_uid(prefix=f"{UID_ROOT}."), 1001 + k) for k in (0, 1)
    ]
    volumes = [_volume(10), _volume(11)]
    outputs = [write_series(v, templates, j) for v, j in zip(volumes, jobs, strict=True)]
    for volume, job, written in zip(volumes, jobs, outputs, strict=True):
        assert len(written) == SLICES
        for z, path in enumerate(written):
            ds = pydicom.dcmread(path)
            assert ds.SeriesInstanceUID == job.series_instance_uid
            assert ds.SeriesNumber == job.series_number
            assert ds.SOPInstanceUID == instance_uid(job.series_instance_uid, z, UID_ROOT)
            decoded = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope)
            assert np.abs(decoded - volume[z]).max() <= float(ds.RescaleSlope) / 2 * (1 + 1e-6)


def test_write_series_checks_its_inputs(tmp_path: Path) -> None:
    sources = _source(tmp_path / "src")
    templates = prepare_templates(sources)
    job = _job(tmp_path / "out", generate_uid(prefix=f"{UID_ROOT}."))
    with pytest.raises(PermanentError, match="does not match its source's size"):
        write_series(np.zeros((SLICES, ROWS + 1, COLS), np.float32), templates, job)
    bad = _volume()
    bad[4, 1, 1] = np.nan
    with pytest.raises(PermanentError, match="slice 4 has NaN"):
        write_series(bad, templates, job)
    with pytest.raises(ValueError, match="not a valid"):
        _job(tmp_path / "out", "1.2.abc")
    with pytest.raises(ValueError, match="too long"):
        SeriesJob(
            outdir=tmp_path,
            series_instance_uid="1.2.3",
            series_number=1,
            series_description="x",
            derivation_description="y",
            uid_root="1." + "2" * 50,
        )


def test_unreadable_source_fails_permanently(tmp_path: Path) -> None:
    sources = _source(tmp_path / "src")
    sources[2].write_bytes(b"not DICOM at all")
    with pytest.raises(PermanentError, match="source slice 2 is not readable"):
        prepare_templates(sources)


def test_private_tags_go_from_a_sequence_sent_as_un(tmp_path: Path) -> None:
    sources = _source(tmp_path / "src")
    ds = pydicom.dcmread(sources[0])
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.private_block(0x0013, "ACME NESTED", create=True).add_new(0x01, "LO", "nested secret")
    # As some senders forward it: UN whose value is the sequence in implicit VR (PS3.5 6.2.2).
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_data_element(fp, ds["RadiopharmaceuticalInformationSequence"])
    items = fp.getvalue()[8:-8]  # without the tag + length header and the sequence delimiter
    tag = Tag("RadiopharmaceuticalInformationSequence")
    del ds[tag]
    ds[tag] = RawDataElement(tag, "UN", len(items), items, 0, False, True)
    ds.save_as(sources[0])
    raw = pydicom.dcmread(sources[0], stop_before_pixels=True)
    assert raw.get_item("RadiopharmaceuticalInformationSequence").VR == "UN"
    written = write_series(
        _volume(),
        prepare_templates(sources),
        _job(tmp_path / "out", generate_uid(prefix=f"{UID_ROOT}.")),
    )
    assert b"nested secret" not in written[0].read_bytes()
    out = pydicom.dcmread(written[0])
    assert out["RadiopharmaceuticalInformationSequence"].VR == "SQ"
    kept = out.RadiopharmaceuticalInformationSequence[0]
    public = [e for e in item if not e.tag.is_private]
    assert public and [str(e) for e in kept] == [str(e) for e in public]
