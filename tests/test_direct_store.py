"""The C-STORE request written straight to the socket (petray.dicom.direct_store) is, byte for
byte, the request pynetdicom itself would send, for any maximum PDU length; real peers store
what it sends; the responses are read without pynetdicom's decoding when they are plain, by a
reactor that waits rather than polls."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage  # type: ignore[attr-defined]

from petray.dicom import wire
from petray.dicom.direct_store import ResponseReader
from petray.dicom.scu import DicomNode, open_association, send_instances
from petray.errors import DeliveryRefused
from tests.support.dimse import pynetdicom_pdus
from tests.support.peers import LOOPBACK, free_port, start_storescp, write_pet_series

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


@contextmanager
def _pynetdicom_scp(
    ae_title: str, on_store: Callable[[evt.Event], Any], *, max_pdu: int | None = None
) -> Iterator[DicomNode]:
    """A pynetdicom Store SCP for PET answering with ``on_store``, as a node to send to."""
    ae = AE(ae_title=ae_title)
    if max_pdu is not None:
        ae.maximum_pdu_size = max_pdu
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    server = ae.start_server(
        (LOOPBACK, free_port()), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield DicomNode(ae_title, LOOPBACK, server.server_address[1])
    finally:
        server.shutdown()


def test_a_peer_with_a_small_maximum_pdu_stores_every_instance_whole(tmp_path: Path) -> None:
    # 4 KiB PDUs: a 32x32 slice takes a few data fragments and the command one of its own.
    paths = write_pet_series(tmp_path / "series", 5)
    stored: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset)
        return 0x0000

    with _pynetdicom_scp("SMALLPDU", on_store, max_pdu=4096) as node:
        report = send_instances(node, paths, calling_ae="PETRAY", timeout_s=10)
    assert report.sent == 5
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in paths}
    assert {str(ds.SOPInstanceUID) for ds in stored} == set(sent)
    for ds in stored:
        assert ds.PixelData == sent[str(ds.SOPInstanceUID)].PixelData


# -- the responses, read by the reactor's own read step ------------------------------------------


def _store_response_command(
    status: int, *, comment: str = "", offending: list[int] | None = None
) -> bytes:
    """The C-STORE-RSP command set exactly as pynetdicom encodes it."""
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 513
    primitive.AffectedSOPClassUID = SOP_CLASS
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    if offending:
        primitive.OffendingElement = offending
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize(
    ("status", "comment"),
    [(0x0000, ""), (0xB000, "coerced"), (0xA700, "disk full!"), (0xC000, "x" * 64)],
)
def test_store_responses_pynetdicom_encodes_are_read(status: int, comment: str) -> None:
    parsed = wire.parse_store_response(_store_response_command(status, comment=comment))
    assert parsed == wire.StoreResponse(513, status, comment)


def test_what_is_not_a_plain_store_response_is_left_to_pynetdicom() -> None:
    with_offending = _store_response_command(0xA900, offending=[0x00100010])
    echo = C_ECHO_RSP()
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitive.Status = 0
    echo.primitive_to_message(primitive)
    plain = _store_response_command(0)
    for command in (
        with_offending,
        bytes(encode(echo.command_set, True, True)),
        plain[:-3],  # cut inside an element
        plain[:12],  # the group length alone: no status
    ):
        assert wire.parse_store_response(command) is None


@contextmanager
def _readers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ResponseReader]]:
    installed: list[ResponseReader] = []
    install = ResponseReader.install.__func__  # type: ignore[attr-defined]

    def recording(cls: type[ResponseReader], dul: Any) -> ResponseReader | None:
        reader = install(cls, dul)
        if reader is not None:
            installed.append(reader)
        return reader

    monkeypatch.setattr(ResponseReader, "install", classmethod(recording))
    yield installed


def test_storescp_responses_are_read_by_the_direct_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_pet_series(tmp_path / "series", 6)
    with _readers(monkeypatch) as readers, start_storescp(tmp_path / "scp") as scp:
        report = send_instances(
            DicomNode(scp.aet, scp.host, scp.port), paths, calling_ae="PETRAY", timeout_s=10
        )
        assert len(scp.wait_received(6)) == 6
    assert report.sent == 6
    [reader] = readers
    assert reader.read == 6
    assert reader.direct  # nothing was handed to pynetdicom before the release


def test_a_response_with_an_offending_element_goes_to_pynetdicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_pet_series(tmp_path / "series", 2)

    def refuse(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = 0xA900
        status.OffendingElement = [0x00100010]
        status.ErrorComment = "patient name"
        return status

    with (
        _pynetdicom_scp("REFUSER", refuse) as node,
        _readers(monkeypatch) as readers,
        pytest.raises(DeliveryRefused, match="0xA900"),
    ):
        send_instances(node, paths, calling_ae="PETRAY", timeout_s=10)
    [reader] = readers
    assert (reader.read, reader.direct) == (0, False)


def test_each_association_lets_go_of_its_wake_up_sockets(tmp_path: Path) -> None:
    # Without an explicit close they waited for the cyclic garbage collector: two descriptors
    # per association, held for as long as a busy gateway did not collect.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with start_storescp(tmp_path / "scp") as scp:
        node = DicomNode(scp.aet, scp.host, scp.port)
        contexts = [build_context(PositronEmissionTomographyImageStorage)]
        gc.disable()
        try:
            with open_association(node, calling_ae="PETRAY", contexts=contexts, timeout_s=10):
                pass
            before = open_fds()
            for _ in range(10):
                with open_association(node, calling_ae="PETRAY", contexts=contexts, timeout_s=10):
                    pass
            time.sleep(0.2)  # the last connections' own sockets closing
            assert open_fds() - before < 4
        finally:
            gc.enable()
