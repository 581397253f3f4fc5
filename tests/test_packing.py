"""The upload archive leaves the site without any identifying value of the source headers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread

from petray.archive import write_upload_archive
from petray.deid import choose_date_shift_days, identifying_values
from petray.packing import upload_metadata
from petray.radiopharm import SEED_RADIOPHARMACEUTICALS
from petray.synth import make_pet_series, write_series
from petray.validation import build_processing_header, processing_metadata
from petray.volume import load_series_volume

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
    volume = load_series_volume(files)
    header = build_processing_header(
        dcmread(files[0], stop_before_pixels=True),
        slice_spacing_mm=volume.spacing_zyx[0],
        table=SEED_RADIOPHARMACEUTICALS,
    )
    metadata = upload_metadata(
        processing_metadata(header, date_shift_days=choose_date_shift_days(TASK_ID)),
        task_id=TASK_ID,
        client_id="site-1",
    )
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
    # The scan must look for what matters, or it proves nothing.
    assert {"MRN-77321-XQ", "Quixote", str(datasets[0].StudyInstanceUID)} <= secrets
    assert str(datasets[0].AccessionNumber) in secrets
    texts = _archive_texts(archive)
    leaked = sorted(s for s in secrets for text in texts if s.encode() in text)
    assert leaked == []
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([f"{TASK_ID}.npy", "metadata.json"])


def test_the_scan_finds_a_leak(tmp_path: Path) -> None:
    datasets = make_pet_series(slices=3, rows=16, cols=16, patient_id="MRN-LEAK-1")
    archive = tmp_path / "leak.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", '{"note": "MRN-LEAK-1"}')
    secrets = identifying_values(datasets[0])
    assert any(s.encode() in text for s in secrets for text in _archive_texts(archive))
