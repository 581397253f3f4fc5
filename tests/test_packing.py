"""The upload archive leaves the site without any identifying value of the source headers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from petray.demo.synth import make_pet_series, write_series
from petray.imaging.decay import read_slice_decays
from petray.imaging.deid import choose_date_shift_days, identifying_values
from petray.imaging.reconstruction import RECONSTRUCTION_FIELDS
from petray.imaging.volume import load_series_volume
from petray.service.archive import write_upload_archive
from petray.service.packing import upload_metadata
from petray.stages.validation import build_processing_header, processing_metadata
from tests.support.stages import validate_and_pack

TASK_ID = "0123456789abcdef0123456789abcdef"


def _archive_texts(path: Path) -> list[bytes]:
    """The archive as stored and every entry decompressed: all the bytes a reader could see."""
    texts = [path.read_bytes()]
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            texts.append(info.filename.encode())
            texts.append(zf.read(info))
    return texts


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_upload_archive_carries_no_identifying_value(tmp_path: Path, vendor: str) -> None:
    datasets = make_pet_series(
        slices=12,
        rows=32,
        cols=32,
        vendor=vendor,
        patient_id="MRN-77321-XQ",
        patient_name="Quixote^Alonso^Q",
    )
    files = write_series(datasets, tmp_path / "series")
    # The Validating and Packing stages' own functions, as their actors call them (no Ray).
    archive = tmp_path / f"{TASK_ID}.zip"
    done = validate_and_pack(files, archive, task_id=TASK_ID, client_id="site-1")
    assert done.packed.archive == str(archive) and done.packed.shape == (12, 32, 32)
    assert done.packed.slice_paths == tuple(str(p) for p in done.volume.slice_paths)
    assert done.quant.check.status == "pending" and done.quant.suv_factor is not None
    assert done.validation.date_shift_days == choose_date_shift_days(TASK_ID)
    secrets: set[str] = set()
    for ds in datasets:
        secrets |= identifying_values(ds)
    # The scan must look for what matters, or it proves nothing.
    assert {"MRN-77321-XQ", "Quixote", str(datasets[0].StudyInstanceUID)} <= secrets
    assert str(datasets[0].AccessionNumber) in secrets
    texts = _archive_texts(archive)
    leaked = sorted(s for s in secrets for text in texts if s.encode() in text)
    assert leaked == []
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([f"{TASK_ID}.npy", "metadata.json"])


def _identity_everywhere(ds: Dataset, patient_id: str) -> None:
    """Identity typed into every reconstruction field the service gets (issue 15, item 4)."""
    ds.ConvolutionKernel = "Quixote"
    ds.AttenuationCorrectionMethod = f"measured {patient_id}"
    ds.ScatterCorrectionMethod = "Alonso Quixote"
    ds.ActualFrameDuration = int(patient_id)
    ds.DecayFactor = f"1.{patient_id}"
    block = ds.private_block(0x0009, "GEMS_PETD_01")
    ds[block.get_tag(0xBA)].value = int(patient_id)
    ds[block.get_tag(0xBB)].value = float(patient_id)
    ds[block.get_tag(0xDC)].value = float(f"0.{patient_id}")
    ds.InstitutionName = "Hospital de la Mancha"
    ds.AccessionNumber = "ACC-99127"


def test_reconstruction_details_carry_no_identifying_value(tmp_path: Path) -> None:
    patient_id = "7732119"
    datasets = make_pet_series(
        slices=6, rows=16, cols=16, vendor="ge", patient_id=patient_id,
        patient_name="Quixote^Alonso^Q",
    )  # fmt: skip
    for ds in datasets:
        _identity_everywhere(ds, patient_id)
    files = write_series(datasets, tmp_path / "series")
    volume = load_series_volume(files)
    header = build_processing_header(
        dcmread(files[0], stop_before_pixels=True),
        slice_spacing_mm=volume.spacing_zyx[0],
        slice_decays=read_slice_decays(files),
    )
    metadata = upload_metadata(
        processing_metadata(header, date_shift_days=choose_date_shift_days(TASK_ID)),
        task_id=TASK_ID,
        client_id="site-1",
    )
    details = metadata["reconstruction"]
    # Every field is there; each one that carried identity is null, the rest still says
    # something (the scan below would be trivially clean if nothing were sent).
    assert list(details) == list(RECONSTRUCTION_FIELDS)
    for field in ("ConvolutionKernel", "AttenuationCorrectionMethod", "ScatterCorrectionMethod"):
        assert details[field] is None, field
    assert details["ActualFrameDuration"] is None
    assert details["DecayFactor"] == {"min": None, "max": None, "slices": 6}
    assert details["ScannerPostFilter"] == {
        "GEMS_PETD_01": {"post_filter": None, "post_filt_parm": None, "ir_z_filter_ratio": None}
    }
    assert details["DecayCorrection"] == "START"
    archive = tmp_path / f"{TASK_ID}.zip"
    write_upload_archive(
        archive,
        task_id=TASK_ID,
        volume=volume.data,
        voxel_spacing_zyx=volume.spacing_zyx,
        metadata=metadata,
        compresslevel=1,
    )
    secrets: set[str] = set()
    for ds in datasets:
        secrets |= identifying_values(ds)
    assert {patient_id, "Quixote", "Alonso Quixote", "Hospital de la Mancha"} <= secrets
    texts = _archive_texts(archive)
    assert sorted(s for s in secrets for text in texts if s.encode() in text) == []


def test_the_scan_finds_a_leak(tmp_path: Path) -> None:
    datasets = make_pet_series(slices=3, rows=16, cols=16, patient_id="MRN-LEAK-1")
    archive = tmp_path / "leak.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", '{"note": "MRN-LEAK-1"}')
    secrets = identifying_values(datasets[0])
    assert any(s.encode() in text for s in secrets for text in _archive_texts(archive))
