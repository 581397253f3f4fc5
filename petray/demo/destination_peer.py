"""The demo's DICOM destination: Orthanc when installed, else petray's receiving SCP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pydicom

from petray.demo.demo_check import DestinationSeries, group_by_series
from petray.demo.orthanc import ORTHANC_BIN, OrthancPeer, start_orthanc
from petray.demo.receiver import FolderReceiver, receiving_scp
from petray.dicom.scu import DicomNode


class Destination(Protocol):
    node: DicomNode

    def describe(self) -> str: ...

    def series_of(self, study_instance_uid: str) -> list[DestinationSeries]: ...


class OrthancDestination:
    def __init__(self, peer: OrthancPeer) -> None:
        self._peer = peer
        self.node = DicomNode(peer.aet, peer.host, peer.dicom_port)

    def describe(self) -> str:
        node = self.node
        return f"Orthanc {node.ae_title}@{node.host}:{node.port} ({self._peer.http_url})"

    def series_of(self, study_instance_uid: str) -> list[DestinationSeries]:
        datasets = [self._peer.instance_dataset(i) for i in self._peer.instances()]
        return group_by_series(d for d in datasets if d.StudyInstanceUID == study_instance_uid)


class FolderDestination:
    def __init__(self, receiver: FolderReceiver, port: int) -> None:
        self._receiver = receiver
        self.node = DicomNode("RECEIVER", "127.0.0.1", port)

    def describe(self) -> str:
        return f"petray receiving SCP RECEIVER@127.0.0.1:{self.node.port}"

    def series_of(self, study_instance_uid: str) -> list[DestinationSeries]:
        datasets = [pydicom.dcmread(p) for p in self._receiver.files()]
        return group_by_series(d for d in datasets if d.StudyInstanceUID == study_instance_uid)


@contextlib.contextmanager
def start_destination(workdir: Path) -> Iterator[Destination]:
    if ORTHANC_BIN.exists():
        with start_orthanc(workdir / "orthanc") as peer:
            yield OrthancDestination(peer)
        return
    with receiving_scp(workdir / "received") as (receiver, port):
        yield FolderDestination(receiver, port)
