"""The Unpacking stage's work without Ray (petray.stages.unpack, issue 14): from the packed
series and the service's result to derived DICOM series and the quantitative verdict."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread

from petray.demo.synth import make_pet_series, write_series
from petray.imaging.derive import EncodedSeries, prepare_templates
from petray.imaging.filters import FilterSpec
from petray.imaging.quant import QuantThresholds
from petray.service.archive import DENOISED_NAME, METADATA_NAME, ArchiveRejected
from petray.stages.outputs import series_job
from petray.stages.records import Packed, Quant
from petray.stages.unpack import (
    PreparedTemplates,
    filter_series,
    judged,
    open_result,
    written,
)
from tests.support.stages import validate_and_pack

TASK_ID = "0123456789abcdef0123456789abcdef"
UID_ROOT = "1.2.826.0.1.3680043.10.1234"
SMOOTH = FilterSpec(id=1, description="Gauss 6mm", series_number=901, fwhm_mm=6.0)
SHARP = FilterSpec(id=2, description="Denoised", series_number=902)


def packed_task(tmp_path: Path) -> tuple[Packed, Quant, np.ndarray]:
    files = write_series(make_pet_series(slices=6, rows=16, cols=16), tmp_path / "in")
    done = validate_and_pack(files, tmp_path / "work" / f"{TASK_ID}.zip", task_id=TASK_ID)
    return done.packed, done.quant, done.received


def result_archive(path: Path, denoised: np.ndarray, task_id: str = TASK_ID) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, denoised.astype(np.float32))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(DENOISED_NAME, buffer.getvalue())
        zf.writestr(METADATA_NAME, json.dumps({"task_id": task_id, "algorithm": "test"}))
    return path


def test_a_result_becomes_derived_series_and_a_verdict(tmp_path: Path) -> None:
    packed, quant, received = packed_task(tmp_path)
    archive = result_archive(tmp_path / "result.zip", received * 0.95)
    result, templates = open_result(
        archive, packed, task_id=TASK_ID, max_uncompressed_bytes=2**26, max_factor=100.0
    )
    assert result.denoised.shape == packed.shape and len(templates) == 6
    measured = {}
    for index, (spec, write) in enumerate([(SMOOTH, True), (SHARP, False)]):
        job = series_job(
            tmp_path / "out",
            TASK_ID,
            spec,
            uid_root=UID_ROOT,
            original_description="WB FDG",
            algorithm=result.algorithm,
        )
        done = filter_series(
            result.denoised,
            None,
            templates,
            spec,
            packed.spacing_zyx,
            job,
            write=write,
            body_threshold_bqml=quant.body_threshold_bqml,
        )
        # Written here, or encoded on another node for the gateway to write.
        assert isinstance(done.series, EncodedSeries) is not write
        assert written(done, job) == 6
        files = sorted(job.outdir.iterdir())
        assert [dcmread(f).SeriesNumber for f in files] == [spec.series_number] * 6
        assert {str(dcmread(f).SeriesInstanceUID) for f in files} == {job.series_instance_uid}
        assert done.metrics is not None
        measured[index] = done.metrics
    verdict = judged(quant, [SMOOTH, SHARP], measured, QuantThresholds(max_activity_change_pct=50))
    assert verdict is not None and verdict.check.status == "passed"
    assert [row["series_number"] for row in verdict.series] == [901, 902]
    # A 5 % lower result moves the total activity by about -5 %.
    assert verdict.series[1]["change_pct"]["total_mbq"] == pytest.approx(-5.0, abs=0.5)
    strict = judged(quant, [SMOOTH, SHARP], measured, QuantThresholds(max_activity_change_pct=1))
    assert strict is not None and strict.check.status == "held"
    assert judged(None, [SMOOTH], {0: measured[0]}, QuantThresholds()) is None
    assert judged(quant, [SMOOTH, SHARP], {0: measured[0]}, QuantThresholds()) is None


def test_a_result_for_another_task_or_shape_is_refused(tmp_path: Path) -> None:
    packed, _quant, received = packed_task(tmp_path)
    other = result_archive(tmp_path / "other.zip", received, task_id="f" * 32)
    with pytest.raises(ArchiveRejected, match="the result of another task"):
        open_result(other, packed, task_id=TASK_ID, max_uncompressed_bytes=2**26, max_factor=100)
    cropped = result_archive(tmp_path / "cropped.zip", received[:5])
    with pytest.raises(ArchiveRejected, match="shape"):
        open_result(cropped, packed, task_id=TASK_ID, max_uncompressed_bytes=2**26, max_factor=100)


def test_derived_series_keep_the_patient_and_study(tmp_path: Path) -> None:
    packed, _quant, received = packed_task(tmp_path)
    result, templates = open_result(
        result_archive(tmp_path / "r.zip", received),
        packed,
        task_id=TASK_ID,
        max_uncompressed_bytes=2**26,
        max_factor=100.0,
    )
    job = series_job(
        tmp_path / "out", TASK_ID, SHARP, uid_root=UID_ROOT, original_description="", algorithm=""
    )
    filter_series(result.denoised, None, templates, SHARP, packed.spacing_zyx, job, write=True)
    source = pydicom.dcmread(packed.slice_paths[0])
    derived = pydicom.dcmread(sorted(job.outdir.iterdir())[0])
    assert (derived.PatientID, derived.StudyInstanceUID) == (
        source.PatientID,
        source.StudyInstanceUID,
    )
    assert derived.SeriesInstanceUID != source.SeriesInstanceUID


def test_templates_prepared_while_the_service_works_are_the_ones_made_at_unpacking(
    tmp_path: Path,
) -> None:
    packed, _quant, received = packed_task(tmp_path)
    prepared = PreparedTemplates(limit=2)
    prepared.prepare(TASK_ID, packed.slice_paths)
    prepared.prepare(TASK_ID, packed.slice_paths)  # a repeated hand-over is one job
    ahead = prepared.take(TASK_ID, packed.slice_paths)
    assert ahead is not None and ahead == prepare_templates([Path(p) for p in packed.slice_paths])
    assert prepared.take(TASK_ID, packed.slice_paths) is None  # taken once

    archive = result_archive(tmp_path / "result.zip", received)
    _result, templates = open_result(
        archive,
        packed,
        task_id=TASK_ID,
        max_uncompressed_bytes=2**26,
        max_factor=100.0,
        templates=ahead,
    )
    assert templates is ahead


def test_prepared_templates_are_keyed_by_the_packed_slices_and_bounded(tmp_path: Path) -> None:
    packed, _quant, _received = packed_task(tmp_path)
    prepared = PreparedTemplates(limit=2)
    prepared.prepare(TASK_ID, packed.slice_paths)
    # Packed again (another set of slices): the earlier templates are not handed out.
    assert prepared.take(TASK_ID, packed.slice_paths[:-1]) is None
    for task_id in ("a" * 32, "b" * 32, "c" * 32):
        prepared.prepare(task_id, packed.slice_paths)
    assert prepared.take(TASK_ID, packed.slice_paths) is None  # the oldest went first
    assert prepared.take("c" * 32, packed.slice_paths) is not None
    # Unreadable sources: nothing is handed out, and making them anew reports the reason.
    prepared.prepare("d" * 32, [str(tmp_path / "missing.dcm")])
    assert prepared.take("d" * 32, [str(tmp_path / "missing.dcm")]) is None
