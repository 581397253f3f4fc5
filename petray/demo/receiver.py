"""A minimal receiving Storage SCP: the demo's destination when Orthanc is not installed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from petray.dicom.status import StoreStatus
from petray.dicom.uids import validate_uid


class FolderReceiver:
    """Stores every received instance as ``{SOPInstanceUID}.dcm`` in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def on_store(self, event: evt.Event) -> int:
        ds: Dataset = event.dataset
        ds.file_meta = event.file_meta
        name = f"{validate_uid(str(ds.SOPInstanceUID))}.dcm"
        with self._lock:
            ds.save_as(self.folder / name, enforce_file_format=True)
        return int(StoreStatus.SUCCESS)

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


@contextmanager
def receiving_scp(
    folder: Path, *, ae_title: str = "RECEIVER", port: int = 0
) -> Iterator[tuple[FolderReceiver, int]]:
    receiver = FolderReceiver(folder)
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(
                context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, receiver.on_store)]
    )
    assert server is not None
    try:
        yield receiver, int(server.server_address[1])
    finally:
        server.shutdown()
