"""The real-peer harness works: Orthanc and DCMTK receive, send and verify as tests expect."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from tests.support.peers import (
    LOOPBACK,
    OrthancPeer,
    StoreSCP,
    dcentvfy_errors,
    dciodvfy_errors,
    free_port,
    run_echoscu,
    run_storescu,
    write_pet_series,
)

pytestmark = pytest.mark.peers


def _sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))
        assert sock.getsockname()[1] == port


def test_orthanc_receives_a_series_from_storescu(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 5)

    result = run_storescu([tmp_path / "series"], port=orthanc.dicom_port, called_ae=orthanc.aet)

    assert result.returncode == 0, result.stderr
    assert len(orthanc.instances()) == 5
    [series] = orthanc.series()
    sent = pydicom.dcmread(paths[0])
    assert series["MainDicomTags"]["SeriesInstanceUID"] == sent.SeriesInstanceUID
    assert len(series["Instances"]) == 5
    assert orthanc.sop_instance_uids() == _sop_uids(paths)
    stored = orthanc.instance_dataset(orthanc.instances()[0])
    assert str(stored.SOPInstanceUID) in _sop_uids(paths)
    assert stored.Modality == "PT"


def test_storescp_receives_over_one_association(dcmtk_storescp: StoreSCP, tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 4)

    result = run_storescu(paths, port=dcmtk_storescp.port, called_ae=dcmtk_storescp.aet)

    assert result.returncode == 0, result.stderr
    received = dcmtk_storescp.wait_received(4)
    assert _sop_uids(received) == _sop_uids(paths)
    assert dcmtk_storescp.association_count() == 1
    assert dcmtk_storescp.store_request_count() == 4


def test_orthanc_sends_to_storescp_through_modalities(
    orthanc: OrthancPeer, dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    paths = write_pet_series(tmp_path / "series", 3)
    for path in paths:
        assert orthanc.upload(path)["Status"] == "Success"
    orthanc.add_modality("scp", dcmtk_storescp.aet, dcmtk_storescp.host, dcmtk_storescp.port)

    answer = orthanc.store_to("scp", [orthanc.series()[0]["ID"]])

    assert answer["InstancesCount"] == 3
    assert answer["FailedInstancesCount"] == 0
    assert _sop_uids(dcmtk_storescp.wait_received(3)) == _sop_uids(paths)


def test_storescu_sends_compressed_files_without_decompressing(
    dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)

    result = run_storescu(paths, port=dcmtk_storescp.port, called_ae=dcmtk_storescp.aet)

    assert result.returncode == 0, result.stderr
    received = dcmtk_storescp.wait_received(2)
    assert len(received) == 2
    for path in received:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless


def test_echoscu_reaches_a_listener_and_not_a_closed_port(dcmtk_storescp: StoreSCP) -> None:
    assert run_echoscu(port=dcmtk_storescp.port, called_ae=dcmtk_storescp.aet).returncode == 0
    assert run_echoscu(port=free_port(), called_ae="NOBODY", timeout=30).returncode != 0


def test_dciodvfy_passes_the_test_series_and_flags_a_missing_attribute(tmp_path: Path) -> None:
    path = write_pet_series(tmp_path, 1)[0]
    assert dciodvfy_errors(path) == []

    ds = pydicom.dcmread(path)
    del ds.Units
    ds.save_as(path)

    errors = dciodvfy_errors(path)
    assert len(errors) == 1
    assert "Units" in errors[0]


def test_dcentvfy_flags_inconsistent_entities(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path, 3)
    assert dcentvfy_errors(paths) == []

    ds = pydicom.dcmread(paths[2])
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(paths[2])

    errors = dcentvfy_errors(paths)
    assert errors
    assert all("PatientID" in line for line in errors)
