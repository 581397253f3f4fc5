"""Requests read straight from the socket (petray.dicom.direct_receive): the answers are the
bytes pynetdicom would send, real senders' instances are stored whole however they are cut into
PDUs, and whatever the direct path does not serve goes to pynetdicom and is served as before."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
import pytest
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PositronEmissionTomographyImageStorage,
    Verification,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import petray.dicom.scp
from petray.db.models import Instance
from petray.dicom import wire
from petray.dicom.direct_receive import DirectReceiver
from petray.dicom.ingest import InstanceStore
from petray.dicom.scp import IngestLimits, StoreService
from petray.dicom.scu import keep_responses_for_the_caller
from petray.site.siteconfig import Listener
from tests.support.dimse import pynetdicom_pdus
from tests.support.peers import LOOPBACK, free_port, run_storescu, write_pet_series

AE_TITLE = "PETRAY"
PET = str(PositronEmissionTomographyImageStorage)


@pytest.fixture(autouse=True)
def production_pydicom_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


def _ours(response: bytes, context_id: int, max_pdu: int) -> bytes:
    return b"".join(
        wire.pdus(response, context_id=context_id, max_pdu_length=max_pdu, command=True)
    )


# -- the wire codec ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_pdu", [0, 64, 16384])
@pytest.mark.parametrize(
    ("status", "comment"),
    [
        (0x0000, ""),
        (0xA900, "SOP Class UID differs from the negotiated SOP class"),  # odd length
        (0xC000, "x" * 80),  # beyond LO's 64 characters
    ],
)
def test_a_store_answer_is_the_one_pynetdicom_would_send(
    max_pdu: int, status: int, comment: str
) -> None:
    request = wire.Command(
        field=wire.C_STORE_RQ,
        message_id=65535,
        has_data_set=True,
        sop_class_uid=PET,
        sop_instance_uid="1.2.3.4",  # odd length: padded
    )
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 65535
    primitive.AffectedSOPClassUID = PET
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment[:64]
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    ours = wire.response_command(request, status=status, error_comment=comment)
    assert _ours(ours, 3, max_pdu) == pynetdicom_pdus(message, 3, max_pdu)


def test_an_echo_answer_is_the_one_pynetdicom_would_send() -> None:
    request = wire.Command(field=wire.C_ECHO_RQ, message_id=7, has_data_set=False)
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = Verification
    primitive.Status = 0x0000
    message = C_ECHO_RSP()
    message.primitive_to_message(primitive)
    ours = wire.response_command(request, status=0, sop_class_uid=str(Verification))
    assert _ours(ours, 1, 16384) == pynetdicom_pdus(message, 1, 16384)


def test_requests_pynetdicom_encodes_are_read_back() -> None:
    store = C_STORE()
    store.MessageID, store.Priority = 12, 2
    store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = PET, "1.2.3.45"
    store.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    store_rq = C_STORE_RQ()
    store_rq.primitive_to_message(store)
    echo = C_ECHO()
    echo.MessageID = 13
    echo_rq = C_ECHO_RQ()
    echo_rq.primitive_to_message(echo)
    command = wire.parse_command(_command_bytes(store_rq))
    assert command == wire.Command(wire.C_STORE_RQ, 12, True, PET, "1.2.3.45")
    assert wire.parse_command(_command_bytes(echo_rq)) == wire.Command(wire.C_ECHO_RQ, 13, False)


def _command_bytes(message: Any) -> bytes:
    """A DIMSE message's encoded command set, from its own P-DATA fragments."""
    fragments = [
        value[1:]
        for pdata in message.encode_msg(1, 0)
        for _context, value in pdata.presentation_data_value_list
        if value[0] & wire.IS_COMMAND
    ]
    return b"".join(fragments)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00",  # cut inside an element header
        struct.pack("<HHL", 0x0008, 0x0016, 0),  # not group 0000
        struct.pack("<HHL", 0x0000, 0x0100, 10) + b"\x01\x00",  # longer than what is left
        struct.pack("<HHL", 0x0000, 0x0110, 2) + b"\x01\x00",  # no Command Field
    ],
)
def test_a_malformed_command_set_is_refused(raw: bytes) -> None:
    with pytest.raises(wire.MalformedCommand):
        wire.parse_command(raw)


# -- real senders --------------------------------------------------------------------------------


@dataclass
class Running:
    port: int
    sessions: sessionmaker[Session]
    receivers: list[DirectReceiver] = field(default_factory=list)

    def stored(self) -> dict[str, Path]:
        with self.sessions() as session:
            rows = session.execute(select(Instance.sop_instance_uid, Instance.path)).all()
        return {uid: Path(path) for uid, path in rows}


@contextmanager
def running_scp(
    tmp_path: Path, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Running]:
    root = tmp_path / "instances"
    root.mkdir()
    store = InstanceStore(root, sessions, min_free_bytes=0, fsync=False)
    service = StoreService(store, sessions, on_instance=lambda _: None, limits=IngestLimits())
    port = free_port()
    scp = Running(port, sessions)
    install = petray.dicom.scp.install_direct_receive

    def recording(assoc: Association, *args: Any, **kwargs: Any) -> bool:
        installed = install(assoc, *args, **kwargs)
        scp.receivers.append(assoc.dul._is_transport_event)  # type: ignore[arg-type]
        return installed

    monkeypatch.setattr(petray.dicom.scp, "install_direct_receive", recording)
    server = service.start(Listener(ae_title=AE_TITLE, port=port, bind=LOOPBACK))
    try:
        yield scp
    finally:
        server.shutdown()


def _data_set(path: Path) -> bytes:
    """A file's data set as it was sent (everything after the file meta)."""
    raw = path.read_bytes()
    (meta_length,) = struct.unpack_from("<L", raw, 128 + 4 + 8)
    return raw[128 + 4 + 12 + meta_length :]


@pytest.mark.parametrize("max_send_pdu", [None, 4096])
def test_storescu_slices_are_stored_whole_by_the_direct_path(
    tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    max_send_pdu: int | None,
) -> None:
    # 300x300 16-bit slices (176 KB): one PDU each at our 256 KiB, 44 at 4 KiB.
    paths = write_pet_series(tmp_path / "series", 4, rows=300, cols=300)
    extra = ["--max-send-pdu", str(max_send_pdu)] if max_send_pdu else []
    with running_scp(tmp_path, sqlite_sessions, monkeypatch) as scp:
        result = run_storescu(paths, port=scp.port, called_ae=AE_TITLE, extra_args=extra)
        assert result.returncode == 0, result.stderr
        [receiver] = scp.receivers
        assert receiver.served == 4  # then the release went to pynetdicom
        stored = scp.stored()
    for path in paths:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert _data_set(stored[uid]) == _data_set(path)


def _associate(port: int) -> Association:
    ae = AE(ae_title="RAWSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = [build_context(PET), build_context(Verification)]
    assoc = ae.associate(LOOPBACK, port, contexts=contexts, ae_title=AE_TITLE)
    assert assoc.is_established
    keep_responses_for_the_caller(assoc)  # or the requestor's reactor may take the answers
    return assoc


def _context_id(assoc: Association, abstract_syntax: str) -> int:
    return next(
        int(cx.context_id)
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == abstract_syntax and cx.context_id is not None
    )


def _echo_pdv(context_id: int, message_id: int) -> bytes:
    command = _command_bytes(_echo_rq(message_id))
    return struct.pack(">LBB", len(command) + 2, context_id, wire.COMMAND_LAST) + command


def _echo_rq(message_id: int) -> Any:
    echo = C_ECHO()
    echo.MessageID = message_id
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    return message


def _send_raw(assoc: Association, *pdvs: bytes) -> None:
    """One P-DATA-TF PDU holding ``pdvs``, written to the association's socket."""
    body = b"".join(pdvs)
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert sock is not None
    sock.sendall(struct.pack(">BBL", wire.P_DATA_TF, 0, len(body)) + body)


def _answers(assoc: Association, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        _context, message = assoc.dimse.get_msg(block=True)
        assert message is not None, "no answer"
        statuses.append(int(message.Status))
    return statuses


def test_a_command_cut_across_pdus_is_gathered_and_answered(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_scp(tmp_path, sqlite_sessions, monkeypatch) as scp:
        assoc = _associate(scp.port)
        try:
            context_id = _context_id(assoc, str(Verification))
            command = _command_bytes(_echo_rq(5))
            head, tail = command[:10], command[10:]
            _send_raw(assoc, struct.pack(">LBB", len(head) + 2, context_id, 0x01) + head)
            _send_raw(assoc, struct.pack(">LBB", len(tail) + 2, context_id, 0x03) + tail)
            assert _answers(assoc, 1) == [0x0000]
        finally:
            assoc.release()
        [receiver] = scp.receivers
        assert receiver.served == 1


def _store_on_the_verification_context(assoc: Association) -> None:
    """A C-STORE request the direct path leaves to pynetdicom: its context is Verification."""
    command = wire.c_store_command(msg_id=3, sop_class_uid=PET, sop_instance_uid="1.2.3.4")
    context_id = _context_id(assoc, str(Verification))
    _send_raw(assoc, struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command)
    data = b"\x08\x00\x16\x00\x00\x00\x00\x00"  # an empty SOP Class UID element
    _send_raw(assoc, struct.pack(">LBB", len(data) + 2, context_id, 0x02) + data)


def test_what_the_direct_path_does_not_serve_goes_to_pynetdicom_which_serves_the_rest(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    [path] = write_pet_series(tmp_path / "series", 1)
    with running_scp(tmp_path, sqlite_sessions, monkeypatch) as scp:
        assoc = _associate(scp.port)
        try:
            _store_on_the_verification_context(assoc)
            assoc.dimse.get_msg(block=True)  # pynetdicom answers it as it always has
            status = assoc.send_c_store(path)  # type: ignore[attr-defined]
            assert status.Status == 0x0000
        finally:
            if assoc.is_established:
                assoc.release()
        [receiver] = scp.receivers
        assert not receiver.active and receiver.served == 0
        stored = scp.stored()
    assert set(stored) == {str(pydicom.dcmread(path).SOPInstanceUID)}


def test_a_pdu_whose_fragment_overruns_it_aborts_the_association_not_the_service(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    [path] = write_pet_series(tmp_path / "series", 1)
    with running_scp(tmp_path, sqlite_sessions, monkeypatch) as scp:
        assoc = _associate(scp.port)
        context_id = _context_id(assoc, str(Verification))
        _send_raw(assoc, struct.pack(">LBB", 500, context_id, wire.COMMAND_LAST) + b"\0" * 20)
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
        result = run_storescu([path], port=scp.port, called_ae=AE_TITLE)
        assert result.returncode == 0, result.stderr
        assert len(scp.stored()) == 1
