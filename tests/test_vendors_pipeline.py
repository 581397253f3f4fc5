"""A Philips series stored in counts, sent with DCMTK storescu into a running gateway, reaches the
service as Bq/ml (issue 15): the uploaded npy holds stored value x RescaleSlope x (7053,1009) of
each slice, and the derived series delivered to storescp is Bq/ml as well. The same task also goes
to a DICOMweb destination (Orthanc with its DICOMweb plugin, added as a STOW-RS device) through
the running gateway's StoreSCU actor, and is read back over QIDO-RS."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from actors.gateway import Gateway
from petray.db.engine import unit_of_work
from petray.demo.orthanc import DICOMWEB_PLUGIN, start_orthanc
from petray.demo.synth import (
    PHILIPS_ACTIVITY_FACTOR,
    PHILIPS_PET_CREATOR,
    PHILIPS_PET_GROUP,
    make_pet_series,
    write_series,
)
from petray.domain import Stage, State
from petray.imaging.filters import FilterSpec
from petray.site.siteconfig import add_stow_device
from petray.task_files import TaskFiles
from petray.tasks import TaskSummary, list_tasks
from serve.reference.main import running_reference
from tests.support.gateway_site import prepare_site, site_settings
from tests.support.peers import free_port, qido, run_storescu, start_storescp

pytestmark = [
    pytest.mark.ray,
    pytest.mark.peers,
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb is not installed"),
]

WAIT_S = 120
SLICES, ROWS, COLS = 16, 32, 32
FILTER = FilterSpec(id=None, description="Gauss 4mm", series_number=811, fwhm_mm=4.0)


@pytest.fixture
def home(tmp_path: Path, ray_cluster: None) -> Iterator[Path]:
    yield tmp_path


def _wait_finished(sessions: object) -> TaskSummary:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            tasks = list_tasks(session=session)
        if tasks and tasks[0].state in ("done", "failed"):
            assert len(tasks) == 1
            return tasks[0]
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the task")


def _expected_bqml(paths: list[Path]) -> np.ndarray:
    """What the service must get: each slice's counts x slope x its own (7053,1009), z order."""
    planes = []
    for ds in sorted(
        (pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2])
    ):
        assert ds.Units == "CNTS"
        factor = float(ds.private_block(PHILIPS_PET_GROUP, PHILIPS_PET_CREATOR)[
            PHILIPS_ACTIVITY_FACTOR
        ].value)  # fmt: skip
        planes.append(ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) * factor)
    return np.stack(planes)


def test_philips_counts_reach_the_service_as_bq_per_ml(home: Path) -> None:
    files = write_series(
        make_pet_series(slices=SLICES, rows=ROWS, cols=COLS, seed=21, vendor="philips",
                        units="CNTS"),
        home / "scanner",
    )  # fmt: skip
    expected = _expected_bqml(files)
    reference_port = free_port()
    settings = site_settings(
        home / "home", remote_url=f"http://127.0.0.1:{reference_port}", filter_workers=1
    )
    with (
        running_reference(settings, port=reference_port),
        start_storescp(home / "dest") as dest,
        start_orthanc(home / "orthanc", dicomweb=True) as vna,
    ):
        sessions = prepare_site(settings, destination=(dest.aet, dest.port), filters=(FILTER,))
        with unit_of_work(sessions) as session:
            add_stow_device(session=session, name="vna", url=vna.dicomweb_url)
        gateway = Gateway(settings).start()
        try:
            port = int(gateway.listener["port"])
            sent = run_storescu(files, host="127.0.0.1", port=port, called_ae="PETRAY")
            assert sent.returncode == 0, sent.stderr
            task = _wait_finished(sessions)
        finally:
            gateway.stop()
        assert (task.stage, task.state) == (Stage.DONE, State.DONE), task.reason
        # The archive the Uploader copied into to_process/ (the Downloader removed that copy
        # once the result was in): the same bytes the service read.
        upload = TaskFiles.of(settings, task.id).archive
        with zipfile.ZipFile(upload) as zf:
            volume = np.load(io.BytesIO(zf.read(f"{task.id}.npy")))
            metadata = json.loads(zf.read("metadata.json"))
        assert volume.dtype == np.float32 and volume.shape == expected.shape
        np.testing.assert_allclose(volume, expected, rtol=1e-6, atol=1e-3)
        assert metadata["reconstruction"]["DecayCorrection"] == "START"
        # Delivered series: Bq/ml, with the counts factor gone from its meaning.
        delivered = dest.wait_received(SLICES)
        assert len(delivered) == SLICES
        out = pydicom.dcmread(delivered[0])
        assert out.Units == "BQML"
        peak = max(float(pydicom.dcmread(p).RescaleSlope) for p in delivered) * 32767
        # Same order of magnitude as the Bq/ml input (a filter changes the peak, not the unit).
        assert 0.2 * expected.max() < peak < 2.0 * expected.max()
        # The DICOMweb destination holds the same series, every instance once.
        study, series = str(out.StudyInstanceUID), str(out.SeriesInstanceUID)
        instances = qido(vna, f"/studies/{study}/series/{series}/instances")
        sent_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                     for p in delivered}  # fmt: skip
        assert sorted(str(ds.SOPInstanceUID) for ds in instances) == sorted(sent_uids)
        assert vna.client.get("/statistics").json()["CountInstances"] == SLICES
