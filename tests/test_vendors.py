"""Vendor exports as they really are (issue 15): one test per vendor flavour, each on a synthetic
series written as real DICOM files and read back the way the Validator and the Packer do."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from petray.demo.synth import (
    PHILIPS_ACTIVITY_FACTOR,
    PHILIPS_PET_CREATOR,
    PHILIPS_PET_GROUP,
    make_pet_series,
    write_series,
)
from petray.errors import PermanentError, ValidationFailed
from petray.imaging.decay import read_slice_decays
from petray.imaging.suv import suv_scale
from petray.imaging.vendors import PHILIPS_COUNTS_REFUSAL, activity_factor
from petray.imaging.volume import load_series_volume
from petray.service.archive import write_upload_archive
from petray.service.packing import upload_metadata
from petray.stages.validation import ProcessingHeader, build_processing_header, processing_metadata

SLICES, ROWS, COLS = 12, 32, 32
SEED = 11
# 20 mm slices: 12 slices span two bed positions, so the beds' DecayFactors differ.
TWO_BEDS = {"slice_spacing_mm": 20.0}


def _files(tmp_path: Path, name: str, **spec: object) -> list[Path]:
    datasets = make_pet_series(slices=SLICES, rows=ROWS, cols=COLS, seed=SEED, **spec)
    return write_series(datasets, tmp_path / name)


def _validate(paths: list[Path], **options: object) -> ProcessingHeader:
    """As the Validator does: the first instance's header, every slice's DecayFactor."""
    return build_processing_header(
        pydicom.dcmread(paths[0], stop_before_pixels=True),
        slice_spacing_mm=3.0,
        slice_decays=read_slice_decays(paths),
        **options,  # type: ignore[arg-type]
    )


def _by_position(paths: list[Path]) -> list[Dataset]:
    """The files in the volume's z order (along the normal, feet first for these series)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _rescaled(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _philips_factor(ds: Dataset) -> float:
    block = ds.private_block(PHILIPS_PET_GROUP, PHILIPS_PET_CREATOR)
    return float(block[PHILIPS_ACTIVITY_FACTOR].value)


def _quantum(datasets: list[Dataset], factor: float = 1.0) -> float:
    """Half a stored step in Bq/ml, the largest quantisation error of any slice."""
    return max(float(ds.RescaleSlope) for ds in datasets) * factor / 2


# -- Philips -------------------------------------------------------------------------------


def test_philips_counts_become_bq_per_ml_slice_by_slice(tmp_path: Path) -> None:
    counts = _files(tmp_path, "cnts", vendor="philips", units="CNTS")
    bqml = _files(tmp_path, "bqml", vendor="philips")
    volume = load_series_volume(counts)
    sources = _by_position(counts)
    factors = [_philips_factor(ds) for ds in sources]
    assert len(set(factors)) == SLICES  # a different factor on every slice
    for z, ds in enumerate(sources):
        assert ds.Units == "CNTS"
        expected = _rescaled(ds) * _philips_factor(ds)
        np.testing.assert_allclose(volume.data[z], expected, rtol=1e-6, atol=1e-3)
    # The same phantom stored as Bq/ml: the converted counts are the same activity.
    reference = load_series_volume(bqml).data
    tolerance = _quantum(sources, max(factors)) + _quantum(_by_position(bqml))
    assert np.abs(volume.data - reference).max() <= tolerance
    assert reference.max() > 1000 * tolerance  # the comparison is not trivially true
    header = _validate(counts)
    assert header.iterations == 3 and header.subsets == 11


def test_philips_counts_without_the_factor_are_refused(tmp_path: Path) -> None:
    counts = _files(tmp_path, "cnts", vendor="philips", units="CNTS")
    # Validation reads one instance: there the factor is missing.
    first = pydicom.dcmread(counts[0])
    del first.private_block(PHILIPS_PET_GROUP, PHILIPS_PET_CREATOR)[PHILIPS_ACTIVITY_FACTOR]
    first.save_as(counts[0], enforce_file_format=True)
    with pytest.raises(ValidationFailed) as failure:
        _validate(counts)
    assert PHILIPS_COUNTS_REFUSAL in str(failure.value)
    # The Packer reads every slice: one without the factor fails the volume, naming the file.
    with pytest.raises(PermanentError, match=r"cannot convert to Bq/ml") as packed:
        load_series_volume(counts)
    assert counts[0].name in str(packed.value)


def test_philips_private_group_found_by_its_creator_in_any_block(tmp_path: Path) -> None:
    ds = make_pet_series(slices=1, rows=8, cols=8, vendor="philips", units="CNTS")[0]
    factor = _philips_factor(ds)
    moved = Dataset()
    for elem in ds:
        if elem.tag.group != PHILIPS_PET_GROUP:
            moved.add(elem)
    # Another creator took block 0x10; Philips's block lands at 0x11 (elements 7053,11xx).
    moved.private_block(PHILIPS_PET_GROUP, "SOMEONE ELSE", create=True).add_new(0x09, "DS", "99")
    block = moved.private_block(PHILIPS_PET_GROUP, PHILIPS_PET_CREATOR, create=True)
    block.add_new(PHILIPS_ACTIVITY_FACTOR, "DS", str(factor))
    assert (PHILIPS_PET_GROUP << 16 | 0x1109) in moved
    assert activity_factor(moved) == pytest.approx(factor)


def test_counts_from_other_vendors_are_refused() -> None:
    ds = make_pet_series(slices=1, rows=8, cols=8, vendor="siemens")[0]
    ds.Units = "CNTS"
    with pytest.raises(ValidationFailed, match="units \\(Units\\) must be BQML, got 'CNTS'"):
        activity_factor(ds)


def test_philips_bqml_is_read_as_it_is(tmp_path: Path) -> None:
    paths = _files(tmp_path, "bqml", vendor="philips")
    volume = load_series_volume(paths)
    for z, ds in enumerate(_by_position(paths)):
        assert ds.Units == "BQML"
        np.testing.assert_allclose(volume.data[z], _rescaled(ds), rtol=1e-6)
    assert _validate(paths).decay_correction == "START"


# -- GE: START and ADMIN --------------------------------------------------------------------


def test_ge_start_and_admin_are_both_accepted_and_recorded(tmp_path: Path) -> None:
    start_paths = _files(tmp_path, "start", vendor="ge")
    admin_paths = _files(tmp_path, "admin", vendor="ge", decay_correction="ADMIN")
    start, admin = _validate(start_paths), _validate(admin_paths)
    assert (start.decay_correction, admin.decay_correction) == ("START", "ADMIN")
    shift = -500
    for header, value in ((start, "START"), (admin, "ADMIN")):
        reconstruction = processing_metadata(header, date_shift_days=shift)["reconstruction"]
        assert reconstruction["DecayCorrection"] == value
    # ADMIN pixels are corrected to the injection: larger by the decay over the uptake time.
    uptake_s = (start.acquisition_start - start.radiopharmaceutical_start).total_seconds()
    expected_ratio = math.exp(math.log(2) * uptake_s / start.half_life_s)
    start_volume = load_series_volume(start_paths).data
    admin_volume = load_series_volume(admin_paths).data
    hot = start_volume > 0.2 * start_volume.max()
    ratio = admin_volume[hot] / start_volume[hot]
    assert ratio.mean() == pytest.approx(expected_ratio, rel=1e-3)
    # The SUV scale follows the correction: both series give the same SUV.
    suvs = []
    for paths, volume in ((start_paths, start_volume), (admin_paths, admin_volume)):
        scale = suv_scale(pydicom.dcmread(paths[0]), half_life_s=start.half_life_s)
        assert scale.factor is not None, scale.reason
        suvs.append(float(volume.max()) * scale.factor)
    assert suvs[0] == pytest.approx(suvs[1], rel=1e-3)
    # And so do the per-slice factors: each ADMIN factor is the START one times that ratio.
    assert admin.decay_factors is not None and start.decay_factors is not None
    assert admin.decay_factors.minimum == pytest.approx(
        start.decay_factors.minimum * expected_ratio, rel=1e-6
    )


# -- Siemens: DecayFactor per slice ---------------------------------------------------------


def test_siemens_per_slice_decay_factors_are_summarised(tmp_path: Path) -> None:
    paths = _files(tmp_path, "siemens", vendor="siemens", **TWO_BEDS)
    header = _validate(paths)
    factors = [float(pydicom.dcmread(p).DecayFactor) for p in paths]
    assert len(set(factors)) > 1  # several beds, several factors
    assert header.decay_factors is not None
    assert header.decay_factors.slices == SLICES
    assert (header.decay_factors.minimum, header.decay_factors.maximum) == (
        min(factors),
        max(factors),
    )
    metadata = processing_metadata(header, date_shift_days=-400)["reconstruction"]
    assert metadata["DecayFactor"] == {"min": min(factors), "max": max(factors), "slices": SLICES}


def _rewrite(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def test_a_decay_factor_against_the_frame_times_is_refused(tmp_path: Path) -> None:
    paths = _files(tmp_path, "siemens", vendor="siemens", **TWO_BEDS)
    last = max(paths, key=lambda p: float(pydicom.dcmread(p).FrameReferenceTime))
    _rewrite(last, DecayFactor="1.0001")  # the latest bed, scaled less than the first
    with pytest.raises(ValidationFailed, match="decreases while FrameReferenceTime increases"):
        _validate(paths)


def test_decay_correction_none(tmp_path: Path) -> None:
    paths = _files(tmp_path, "none", vendor="siemens", decay_correction="NONE")
    header = _validate(paths)  # the service takes it; there is just no SUV
    assert header.decay_correction == "NONE" and header.decay_factors is None
    assert suv_scale(pydicom.dcmread(paths[0]), half_life_s=header.half_life_s).factor is None
    _rewrite(paths[3], DecayFactor="1.25")
    with pytest.raises(ValidationFailed, match="not 1 but DecayCorrection is NONE"):
        _validate(paths)


# -- No PatientWeight -----------------------------------------------------------------------


def test_no_weight_is_processed_unless_the_site_requires_it(tmp_path: Path) -> None:
    paths = _files(tmp_path, "noweight", vendor="siemens", patient_weight=False)
    assert "PatientWeight" not in pydicom.dcmread(paths[0])
    header = _validate(paths)
    assert header.weight_kg is None
    metadata = processing_metadata(header, date_shift_days=-400)
    assert metadata["weight"] is None
    volume = load_series_volume(paths)
    archive = tmp_path / "upload.zip"
    write_upload_archive(
        archive,
        task_id="t" * 32,
        volume=volume.data,
        voxel_spacing_zyx=volume.spacing_zyx,
        metadata=upload_metadata(metadata, task_id="t" * 32, client_id="site"),
        compresslevel=1,
    )
    with zipfile.ZipFile(archive) as zf:
        assert json.loads(zf.read("metadata.json"))["weight"] is None
    assert suv_scale(pydicom.dcmread(paths[0]), half_life_s=header.half_life_s).reason == (
        "no weight"
    )
    with pytest.raises(ValidationFailed, match=r"patient weight \(PatientWeight\) missing"):
        _validate(paths, require_patient_weight=True)
    # With a weight, the flag changes nothing.
    weighed = _files(tmp_path, "weight", vendor="siemens")
    assert _validate(weighed, require_patient_weight=True).weight_kg is not None
