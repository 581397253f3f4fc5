"""Real DICOM peers for tests: Orthanc, DCMTK storescp/storescu/echoscu, dicom3tools verifiers.

Loaded as a pytest plugin (``pytest_plugins = ["tests.support.peers"]`` in tests/conftest.py).
Every peer is a process this module starts and terminates itself; all traffic stays on
127.0.0.1. DCMTK and Orthanc listen on all interfaces (ARCHITECTURE.md accepts that) but nothing
here ever connects anywhere but loopback.

Debian's DCMTK and Orthanc leave Nagle's algorithm on unless ``TCP_NODELAY=1`` is in their
environment; without it every instance costs ~45 ms, so every process started here gets it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from petray.demo.orthanc import (
    LOOPBACK,
    START_ATTEMPTS,
    OrthancPeer,
    free_port,
    peer_env,
    port_open,
    start_orthanc,
    stop_process,
    wait_for,
)

STORESCP_BIN = Path("/usr/bin/storescp")
STORESCU_BIN = Path("/usr/bin/storescu")
ECHOSCU_BIN = Path("/usr/bin/echoscu")
DCIODVFY_BIN = Path("/usr/bin/dciodvfy")
DCENTVFY_BIN = Path("/usr/bin/dcentvfy")

# Which storescu proposal option sends a file in its own (compressed) transfer syntax without
# DCMTK decompressing it first; uncompressed files need no option.
_STORESCU_PROPOSE_OPTION: Mapping[str, str] = {
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
    "1.2.840.10008.1.2.1.99": "-xd",  # Deflated Explicit VR Little Endian
}

# --------------------------------------------------------------------------------------------
# Orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPeer]:
    """A fresh Orthanc (AET ``ORTHANC``) for one test."""
    with start_orthanc(tmp_path / "orthanc") as peer:
        yield peer


@pytest.fixture(scope="module")
def orthanc_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    """One Orthanc shared by a test module; call ``clear()`` where a test needs it empty."""
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


# --------------------------------------------------------------------------------------------
# DCMTK storescp


@dataclass
class StoreSCP:
    """A running DCMTK storescp writing what it receives into ``output_dir``."""

    aet: str
    port: int
    output_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return LOOPBACK

    def received(self) -> list[Path]:
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def association_count(self) -> int:
        """Associations accepted so far, from storescp's verbose log.

        "Association Received" is also logged for bare TCP connections (the start-up probe),
        so count acknowledgements instead.
        """
        return self.log_text().count("Association Acknowledged")

    def store_request_count(self) -> int:
        return self.log_text().count("Received Store Request")

    def wait_received(self, count: int, timeout_s: float = 10.0) -> list[Path]:
        """storescp writes a file after answering, so the sender may return slightly earlier."""
        deadline = time.monotonic() + timeout_s
        while len(files := self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return files


@contextlib.contextmanager
def start_storescp(
    workdir: Path, *, aet: str = "STORESCP", extra_args: Sequence[str] = ()
) -> Iterator[StoreSCP]:
    """Run DCMTK storescp until the block ends; accepts every storage SOP class and TS.

    ``extra_args`` go before the port, e.g. ``["--refuse"]`` or ``["--abort-after"]``.
    """
    output_dir = workdir / "received"
    output_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        log_path = workdir / f"storescp-{attempt}.log"
        # -v logs "Association Received" per association (counted by tests); +xa accepts
        # compressed transfer syntaxes too; -pm accepts SOP classes DCMTK does not know;
        # -dhl avoids a reverse DNS lookup per association.
        args = [str(STORESCP_BIN), "-v", "-aet", aet, "+xa", "-pm", "-dhl"]
        args += ["-od", str(output_dir), *extra_args, str(port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=peer_env(), cwd=workdir
            )
        if not wait_for(lambda p=port: port_open(p), process, "storescp", log_path):
            continue
        peer = StoreSCP(
            aet=aet, port=port, output_dir=output_dir, log_path=log_path, process=process
        )
        try:
            yield peer
        finally:
            stop_process(process)
        return
    raise RuntimeError(f"storescp could not start after {START_ATTEMPTS} attempts; see {workdir}")


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    with start_storescp(tmp_path / "storescp") as peer:
        yield peer


# --------------------------------------------------------------------------------------------
# DCMTK storescu / echoscu


def storescu_propose_option(path: Path) -> str | None:
    """The storescu option that proposes ``path``'s own transfer syntax (None: uncompressed)."""
    meta = pydicom.filereader.read_file_meta_info(path)
    return _STORESCU_PROPOSE_OPTION.get(str(meta.TransferSyntaxUID))


def _first_file(paths: Sequence[Path]) -> Path | None:
    for path in map(Path, paths):
        if path.is_file():
            return path
        found = next((p for p in sorted(path.rglob("*")) if p.is_file()), None)
        if found:
            return found
    return None


def run_storescu(
    paths: Sequence[Path],
    *,
    host: str = LOOPBACK,
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    timeout: float = 120.0,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files and/or directories with DCMTK storescu over ONE association.

    Directories are scanned recursively. Only the presentation contexts the files need are
    proposed (``-R``); compressed files are proposed in their own transfer syntax, taken from
    the first file (a test sending mixed compressed syntaxes passes ``extra_args``).
    """
    if not paths:
        raise ValueError("nothing to send")
    first_file = _first_file(paths)
    args = [str(STORESCU_BIN), "-aet", calling_ae, "-aec", called_ae, "-R", "+sd", "+r", "-nh"]
    option = storescu_propose_option(first_file) if first_file else None
    if option and not any(a.startswith("-x") for a in extra_args):
        args.append(option)
    args += [*extra_args, host, str(port), *(str(p) for p in paths)]
    return subprocess.run(
        args, capture_output=True, text=True, env=peer_env(), timeout=timeout, check=False
    )


def run_echoscu(
    *,
    host: str = LOOPBACK,
    port: int,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    args = [str(ECHOSCU_BIN), "-aet", calling_ae, "-aec", called_ae, host, str(port)]
    return subprocess.run(
        args, capture_output=True, text=True, env=peer_env(), timeout=timeout, check=False
    )


# --------------------------------------------------------------------------------------------
# dicom3tools verifiers


def _error_lines(output: str) -> list[str]:
    # dicom3tools prefix each finding with "Error - " or "Warning - "; only errors fail a file.
    return [line.strip() for line in output.splitlines() if line.lstrip().startswith("Error")]


def dciodvfy_errors(path: Path) -> list[str]:
    """IOD conformance errors reported by dciodvfy for one file (warnings are ignored)."""
    result = subprocess.run(
        [str(DCIODVFY_BIN), "-new", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return _error_lines(result.stdout + result.stderr)


def dcentvfy_errors(paths: Sequence[Path]) -> list[str]:
    """Entity-level consistency errors (patient/study/series/frame of reference) across files."""
    result = subprocess.run(
        [str(DCENTVFY_BIN), *(str(p) for p in paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return _error_lines(result.stdout + result.stderr)


def have_tool(path: Path) -> bool:
    return path.exists() or shutil.which(path.name) is not None


# --------------------------------------------------------------------------------------------
# Test data: a small, IOD-valid PET series (until petray.demo.synth is available everywhere)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_pet_dataset(
    index: int,
    *,
    count: int,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    rows: int = 8,
    cols: int = 8,
    sop_uid: str | None = None,
) -> Dataset:
    """One slice of a PET Image Storage series that passes dciodvfy (PS3.3 A.21)."""
    now = datetime(2024, 1, 2, 10, 30, 0)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid or generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = PositronEmissionTomographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = "PT"
    ds.Manufacturer = "petray-tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Test^Peer"
    ds.PatientID = "PEERTEST1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "WHOLEBODY"  # unpaired, so Laterality (Type 2C) must be absent
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [4.0, 4.0]
    ds.SliceThickness = 2.0
    ds.SliceLocation = float(index) * 2.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0.0
    ds.RescaleSlope = 1.0
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CorrectedImage = ["DECY", "ATTN"]
    ds.RandomsCorrectionMethod = "NONE"
    ds.DecayCorrection = "START"
    ds.NumberOfSlices = count
    ds.ImageIndex = index + 1
    ds.FrameReferenceTime = 0.0
    ds.ActualFrameDuration = 60000
    ds.DecayFactor = 1.0
    ds.CollimatorType = "NONE"
    ds.PatientGantryRelationshipCodeSequence = DicomSequence([])
    ds.PatientOrientationCodeSequence = DicomSequence([])
    drug = Dataset()
    drug.RadiopharmaceuticalStartTime = "100000"
    drug.RadionuclideTotalDose = 3.0e8
    drug.RadionuclideHalfLife = 6586.2
    drug.RadionuclideCodeSequence = DicomSequence([_code("77004003", "SCT", "^18^Fluorine")])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
    ramp = (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) + index) % 1000
    ds.PixelData = ramp.astype("<u2").tobytes()
    return ds


def write_pet_series(
    directory: Path, count: int = 5, *, rows: int = 8, cols: int = 8
) -> list[Path]:
    """Write ``count`` slices of one new PET series into ``directory``, named by SOP UID."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        ds = make_pet_dataset(
            index,
            count=count,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            rows=rows,
            cols=cols,
        )
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def qido(peer: OrthancPeer, path: str) -> list[Dataset]:
    """A QIDO-RS query to Orthanc's DICOMweb plugin (``path`` after /dicom-web)."""
    response = peer.client.get(f"/dicom-web{path}", headers={"Accept": "application/dicom+json"})
    response.raise_for_status()
    return [Dataset.from_json(item) for item in response.json()]
