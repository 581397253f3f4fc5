"""DICOMweb delivery benchmark (issue 15): petray's STOW-RS vs C-STORE into the same Orthanc.

    python -m bench.stow [--series small|big] [--runs 3]

The files are a petray-derived series of the cached synthetic series (``bench.ingest``), as the
StoreSCU actor sends them. Each sender sends every file to a fresh Orthanc 1.10 with the DICOMweb
plugin (``orthanc-dicomweb``) and private storage:

* storescu       DCMTK storescu, one association (the reference C-STORE sender);
* petray-dimse   petray.dicom.scu.send_instances, one association;
* petray-dimse-3 the same over three associations (what the StoreSCU actor uses);
* petray-stow    petray.dicom.stow.store_instances, multipart/related batches (50 instances / 32
MB).

Medians of ``--runs``; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from bench.ingest import CACHE_DIR, cached_series
from petray.demo.orthanc import DICOMWEB_PLUGIN, LOOPBACK, OrthancPeer, peer_env, start_orthanc
from petray.dicom.scu import DicomNode, send_instances
from petray.dicom.stow import StowEndpoint, store_instances
from petray.imaging.derive import write_derived_series

STORESCU = "/usr/bin/storescu"
UID_ROOT = "1.2.826.0.1.3680043.10.1234"


def derived_files(series: str) -> list[Path]:
    """The cached synthetic series rebuilt once as a petray-derived series."""
    source = cached_series(series)
    directory = CACHE_DIR / f"stow-derived-{series}"
    marker = directory / ".complete"
    if not marker.exists():
        sources = sorted(source.directory.glob("*.dcm"))
        first = pydicom.dcmread(sources[0], stop_before_pixels=True)
        shape = (len(sources), int(first.Rows), int(first.Columns))
        volume = np.random.default_rng(7).gamma(2.0, 2500.0, size=shape).astype(np.float32)
        write_derived_series(
            volume,
            sources,
            directory,
            series_instance_uid=f"{UID_ROOT}.{len(sources)}.15",
            series_number=815,
            series_description="bench stow",
            derivation_description="petray bench",
            uid_root=UID_ROOT,
        )
        marker.write_text("ok\n")
    return sorted(directory.glob("*.dcm"))


def _storescu(peer: OrthancPeer, files: list[Path]) -> None:
    args = [STORESCU, "-aet", "PETRAY", "-aec", peer.aet, LOOPBACK, str(peer.dicom_port)]
    subprocess.run(args + [str(p) for p in files], env=peer_env(), check=True)


def _dimse(associations: int) -> Callable[[OrthancPeer, list[Path]], None]:
    def send(peer: OrthancPeer, files: list[Path]) -> None:
        node = DicomNode(peer.aet, LOOPBACK, peer.dicom_port)
        send_instances(node, files, calling_ae="PETRAY", associations=associations)

    return send


def _stow(peer: OrthancPeer, files: list[Path]) -> None:
    store_instances(StowEndpoint(peer.dicomweb_url), files)


SENDERS: dict[str, Callable[[OrthancPeer, list[Path]], None]] = {
    "storescu": _storescu,
    "petray-dimse": _dimse(1),
    "petray-dimse-3": _dimse(3),
    "petray-stow": _stow,
}


def time_sender(send: Callable[[OrthancPeer, list[Path]], None], files: list[Path]) -> float:
    with (
        tempfile.TemporaryDirectory(prefix="petray-bench-stow-") as tmp,
        start_orthanc(Path(tmp), dicomweb=True) as peer,
    ):
        started = time.perf_counter()
        send(peer, files)
        seconds = time.perf_counter() - started
        stored = peer.client.get("/statistics").json()["CountInstances"]
        if stored != len(files):
            raise RuntimeError(f"Orthanc holds {stored} of {len(files)} instances")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", choices=["small", "big"], default="small")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not DICOMWEB_PLUGIN.exists():
        raise SystemExit("needs orthanc-dicomweb (scripts/setup.sh test installs it)")
    files = derived_files(args.series)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files)} instances, {megabytes:.0f} MB, Orthanc + DICOMweb plugin on loopback")
    medians = {}
    for name, send in SENDERS.items():
        times = [time_sender(send, files) for _ in range(args.runs)]
        medians[name] = statistics.median(times)
    reference = medians["storescu"]
    print(f"{'sender':<16}{'median s':>10}{'inst/s':>10}{'vs storescu':>13}")
    for name, seconds in medians.items():
        rate = len(files) / seconds
        print(f"{name:<16}{seconds:>10.2f}{rate:>10.0f}{reference / seconds:>12.2f}x")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
