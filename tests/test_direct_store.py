"""The C-STORE request written straight to the socket (petray.dicom.direct_store) is, byte for
byte, the request pynetdicom itself would send, for any maximum PDU length; and real peers
store what it sends."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage  # type: ignore[attr-defined]

from petray.dicom import wire
from petray.dicom.scu import DicomNode, send_instances
from tests.support.dimse import pynetdicom_pdus
from tests.support.peers import LOOPBACK, free_port, write_pet_series

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"


def _pynetdicom_request(
    path: Path, *, msg_id: int, sop_instance_uid: str, context_id: int, max_pdu: int
) -> bytes:
    """What pynetdicom's send_c_store would put on the wire for this file."""
    _meta, offset = split_dataset(path)
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = wire.PRIORITY
    req.AffectedSOPClassUID = SOP_CLASS
    req.AffectedSOPInstanceUID = sop_instance_uid
    req._dataset_path = (path, offset)  # type: ignore[attr-defined]
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return pynetdicom_pdus(message, context_id, max_pdu)


def _ours(
    path: Path, *, msg_id: int, sop_instance_uid: str, context_id: int, max_pdu: int
) -> bytes:
    _meta, offset = split_dataset(path)
    command = wire.c_store_command(
        msg_id=msg_id, sop_class_uid=SOP_CLASS, sop_instance_uid=sop_instance_uid
    )
    data = path.read_bytes()[offset:]
    return b"".join(
        [
            *wire.pdus(command, context_id=context_id, max_pdu_length=max_pdu, command=True),
            *wire.pdus(data, context_id=context_id, max_pdu_length=max_pdu),
        ]
    )


@pytest.mark.parametrize("max_pdu", [0, 64, 4096, 16382, 16384, 1 << 20])
@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.840.10008.99.12345"])  # odd and even lengths
def test_the_request_is_the_one_pynetdicom_would_send(
    tmp_path: Path, max_pdu: int, uid: str
) -> None:
    [path] = write_pet_series(tmp_path, 1)
    kwargs = {"msg_id": 65535, "sop_instance_uid": uid, "context_id": 7, "max_pdu": max_pdu}
    assert _ours(path, **kwargs) == _pynetdicom_request(path, **kwargs)


def test_an_empty_data_set_is_one_last_fragment() -> None:
    [header, fragment] = list(wire.pdus(b"", context_id=1, max_pdu_length=16384))
    assert header == bytes.fromhex("04 00 00000006 00000002 01 02".replace(" ", ""))
    assert bytes(fragment) == b""


def test_a_peer_with_a_small_maximum_pdu_stores_every_instance_whole(tmp_path: Path) -> None:
    # 4 KiB PDUs: a 32x32 slice takes a few data fragments and the command one of its own.
    paths = write_pet_series(tmp_path / "series", 5)
    stored: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="SMALLPDU")
    ae.maximum_pdu_size = 4096
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    server = ae.start_server(
        (LOOPBACK, free_port()), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        report = send_instances(
            DicomNode("SMALLPDU", LOOPBACK, server.server_address[1]),
            paths,
            calling_ae="PETRAY",
            timeout_s=10,
        )
    finally:
        server.shutdown()
    assert report.sent == 5
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in paths}
    assert {str(ds.SOPInstanceUID) for ds in stored} == set(sent)
    for ds in stored:
        assert ds.PixelData == sent[str(ds.SOPInstanceUID)].PixelData
