"""petray.dicom.scu against real peers: DCMTK storescp, Orthanc, and pynetdicom SCPs for
statuses."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PositronEmissionTomographyImageStorage,
    Verification,
)
from pynetdicom.status import Status

from petray.dicom.scu import (
    MIN_INSTANCES_PER_ASSOCIATION,
    DicomNode,
    OutgoingInstance,
    echo,
    open_association,
    presentation_contexts,
    send_instances,
)
from petray.errors import DeliveryRefused, PermanentError, TransientError
from tests.support.peers import (
    LOOPBACK,
    OrthancPeer,
    StoreSCP,
    free_port,
    start_orthanc,
    start_storescp,
    write_pet_series,
)

pytestmark = pytest.mark.peers

CALLING_AE = "PETRAY"
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3 "Refused: Out of Resources"
COERCION_OF_DATA_ELEMENTS = 0xB000  # PS3.4 B.2.3 warning


def _node(peer: StoreSCP | OrthancPeer) -> DicomNode:
    port = peer.port if isinstance(peer, StoreSCP) else peer.dicom_port
    return DicomNode(peer.aet, peer.host, port)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@contextmanager
def pynetdicom_scp(
    status: int, *, sop_class: str = PositronEmissionTomographyImageStorage
) -> Iterator[tuple[DicomNode, list[str]]]:
    """An in-process Store SCP answering every C-STORE with ``status``; yields received UIDs."""
    received: list[str] = []

    def handle_store(event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        received.append(str(request.AffectedSOPInstanceUID))
        return status

    ae = AE(ae_title="TESTSCP")
    ae.add_supported_context(sop_class)
    ae.add_supported_context(Verification)
    server = ae.start_server(
        (LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    assert server is not None  # block=False returns the running server
    try:
        yield DicomNode("TESTSCP", LOOPBACK, server.server_address[1]), received
    finally:
        server.shutdown()


def test_sends_every_instance_over_one_association(
    dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    paths = write_pet_series(tmp_path / "series", 12)
    recorded: list[str] = []

    report = send_instances(
        _node(dcmtk_storescp), paths, calling_ae=CALLING_AE, on_sent=recorded.append
    )

    assert report.sent == 12
    assert report.skipped == 0
    assert report.bytes_sent == sum(p.stat().st_size for p in paths)
    assert recorded == [_uid(p) for p in paths]
    assert {_uid(p) for p in dcmtk_storescp.wait_received(12)} == set(recorded)
    assert dcmtk_storescp.association_count() == 1
    assert dcmtk_storescp.store_request_count() == 12
    assert "MsgID 12," in dcmtk_storescp.log_text()  # message IDs unique per association


def test_orthanc_receives_all_but_the_skipped(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 8)
    already = {_uid(p) for p in paths[:3]}
    recorded: list[str] = []

    report = send_instances(
        _node(orthanc),
        paths,
        calling_ae=CALLING_AE,
        skip_sop_uids=already,
        on_sent=recorded.append,
    )

    assert (report.sent, report.skipped) == (5, 3)
    assert orthanc.sop_instance_uids() == {_uid(p) for p in paths[3:]}
    assert set(recorded).isdisjoint(already)


def test_resuming_after_an_interruption_sends_no_instance_twice(
    dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    paths = write_pet_series(tmp_path / "series", 6)
    durable: list[str] = []

    def crash_after_three(sop_uid: str) -> None:
        durable.append(sop_uid)
        if len(durable) == 3:
            raise KeyboardInterrupt  # the gateway killed mid-send

    node = _node(dcmtk_storescp)
    with pytest.raises(KeyboardInterrupt):
        send_instances(node, paths, calling_ae=CALLING_AE, on_sent=crash_after_three)
    report = send_instances(
        node, paths, calling_ae=CALLING_AE, skip_sop_uids=durable, on_sent=durable.append
    )

    assert (report.sent, report.skipped) == (3, 3)
    assert sorted(durable) == sorted(_uid(p) for p in paths)
    assert dcmtk_storescp.store_request_count() == 6
    assert dcmtk_storescp.association_count() == 2


def test_nothing_to_send_opens_no_association(dcmtk_storescp: StoreSCP, tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)

    report = send_instances(
        _node(dcmtk_storescp), paths, calling_ae=CALLING_AE, skip_sop_uids=[_uid(p) for p in paths]
    )

    assert (report.sent, report.skipped) == (0, 2)
    assert dcmtk_storescp.association_count() == 0


def test_a_repeated_file_is_sent_once(dcmtk_storescp: StoreSCP, tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)

    report = send_instances(_node(dcmtk_storescp), [*paths, paths[0]], calling_ae=CALLING_AE)

    assert (report.sent, report.skipped) == (2, 1)
    assert dcmtk_storescp.store_request_count() == 2


def test_destination_down_is_transient_and_names_it(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    node = DicomNode("PACS", LOOPBACK, free_port())

    with pytest.raises(TransientError) as caught:
        send_instances(node, paths, calling_ae=CALLING_AE, timeout_s=5)

    assert f"PACS@{LOOPBACK}:{node.port}" in str(caught.value)
    assert "Test^Peer" not in str(caught.value)


def test_unknown_calling_ae_is_refused_with_the_reason(tmp_path: Path) -> None:
    # PS3.8 9.3.4: "rejected-permanent, calling AE title not recognised": retrying cannot help.
    # (DCMTK storescp --refuse through the whole pipeline: tests/test_chaos.py.)
    paths = write_pet_series(tmp_path / "series", 2)
    ae = AE(ae_title="PACS")
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    ae.require_calling_aet = ["SOMEONE"]
    server = ae.start_server((LOOPBACK, free_port()), block=False)
    try:
        with pytest.raises(DeliveryRefused, match="Calling AE title not recognised"):
            send_instances(
                DicomNode("PACS", LOOPBACK, server.server_address[1]),
                paths,
                calling_ae=CALLING_AE,
                timeout_s=5,
            )
    finally:
        server.shutdown()


def test_a_peer_rejecting_and_closing_at_once_is_always_a_refusal(tmp_path: Path) -> None:
    # DCMTK storescp --refuse sends A-ASSOCIATE-RJ and closes at once. pynetdicom then aborts
    # without reading the rejection about one association in twelve (it checks the connection
    # after the exchange is over); a "transient" abort would make a refusing PACS wait a retry.
    # Sixty associations would all pass by luck without the fix less than once in a hundred.
    with start_storescp(tmp_path / "storescp", extra_args=["--refuse"]) as peer:
        node = _node(peer)
        contexts = [build_context(PositronEmissionTomographyImageStorage)]
        outcomes = []
        for _ in range(60):
            with (
                pytest.raises(PermanentError) as caught,
                open_association(node, calling_ae=CALLING_AE, contexts=contexts, timeout_s=5),
            ):
                pass
            outcomes.append(str(caught.value))
    assert set(outcomes) == {f"{node} rejected the association permanently: No reason given"}


def test_transiently_rejected_association_is_retried(tmp_path: Path) -> None:
    # pynetdicom answers "rejected-transient, local limit exceeded" when it is busy.
    paths = write_pet_series(tmp_path / "series", 2)
    ae = AE(ae_title="PACS")
    ae.add_supported_context(PositronEmissionTomographyImageStorage)
    ae.add_supported_context(Verification)
    ae.maximum_associations = 1
    server = ae.start_server((LOOPBACK, free_port()), block=False)
    port = server.server_address[1]
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate(LOOPBACK, port, ae_title="PACS")
    try:
        assert held.is_established
        with pytest.raises(TransientError, match="rejected the association"):
            send_instances(DicomNode("PACS", LOOPBACK, port), paths, calling_ae=CALLING_AE)
    finally:
        held.release()
        server.shutdown()


def test_orthanc_refusing_by_abort_is_transient(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 3)
    sent: list[str] = []
    # An unknown calling AE may not store when DicomAlwaysAllowStore is off: Orthanc aborts.
    overrides = {"DicomAlwaysAllowStore": False}
    with start_orthanc(tmp_path / "orthanc", config_overrides=overrides) as peer:
        with pytest.raises(TransientError, match="aborted"):
            send_instances(
                _node(peer), paths, calling_ae=CALLING_AE, on_sent=sent.append, timeout_s=5
            )
        assert peer.instances() == []
    assert sent == []


def test_storescp_aborting_mid_series_is_transient(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    with (
        start_storescp(tmp_path / "scp", extra_args=["--abort-after"]) as scp,
        pytest.raises(TransientError, match="0 of 2"),
    ):
        send_instances(_node(scp), paths, calling_ae=CALLING_AE, timeout_s=5)


def test_silent_destination_times_out_as_transient(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 1)
    with (
        start_storescp(tmp_path / "scp", extra_args=["--sleep-during", "3"]) as scp,
        pytest.raises(TransientError, match="no C-STORE response within 1"),
    ):
        send_instances(_node(scp), paths, calling_ae=CALLING_AE, timeout_s=1)


def test_failure_status_is_a_permanent_refusal(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 3)
    sent: list[str] = []
    with (
        pynetdicom_scp(OUT_OF_RESOURCES) as (node, received),
        pytest.raises(DeliveryRefused, match="Out of Resources") as caught,
    ):
        send_instances(node, paths, calling_ae=CALLING_AE, on_sent=sent.append)
    assert isinstance(caught.value, PermanentError)
    assert len(received) == 1  # stopped at the first refusal
    assert sent == []


def test_warning_status_counts_as_sent(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    sent: list[str] = []
    with pynetdicom_scp(COERCION_OF_DATA_ELEMENTS) as (node, received):
        report = send_instances(node, paths, calling_ae=CALLING_AE, on_sent=sent.append)
    assert report.sent == 2
    assert [uid for uid, _ in report.warnings] == sent == received
    assert "Coercion" in report.warnings[0][1]


def test_destination_accepting_no_proposed_context_is_refused(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    with (
        pynetdicom_scp(Status.SUCCESS, sop_class=CTImageStorage) as (node, received),
        pytest.raises(DeliveryRefused, match="none of the proposed"),
    ):
        send_instances(node, paths, calling_ae=CALLING_AE)
    assert received == []


def test_compressed_files_travel_in_their_own_transfer_syntax(
    dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    [context] = presentation_contexts([OutgoingInstance.from_file(p) for p in paths])
    assert context.transfer_syntax == [RLELossless]

    send_instances(_node(dcmtk_storescp), paths, calling_ae=CALLING_AE)

    received = {_uid(p): p for p in dcmtk_storescp.wait_received(2)}
    for path in paths:
        original = pydicom.dcmread(path)
        copy = pydicom.dcmread(received[str(original.SOPInstanceUID)])
        assert copy.file_meta.TransferSyntaxUID == RLELossless
        assert copy.PixelData == original.PixelData


def test_unreadable_file_is_permanent(dcmtk_storescp: StoreSCP, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all")
    with pytest.raises(PermanentError, match=r"garbage\.dcm"):
        send_instances(_node(dcmtk_storescp), [garbage], calling_ae=CALLING_AE)
    assert dcmtk_storescp.association_count() == 0


def test_association_socket_has_nagle_disabled(dcmtk_storescp: StoreSCP) -> None:
    contexts = [build_context(Verification)]
    with open_association(
        _node(dcmtk_storescp), calling_ae=CALLING_AE, contexts=contexts, timeout_s=5
    ) as assoc:
        transport = assoc.dul.socket
        assert transport is not None
        assert transport.socket is not None
        assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_echo_succeeds_against_storescp(dcmtk_storescp: StoreSCP) -> None:
    result = echo(_node(dcmtk_storescp), calling_ae=CALLING_AE)
    assert result.ok
    assert result.status == Status.SUCCESS
    assert dcmtk_storescp.association_count() == 1


def test_echo_succeeds_against_orthanc(orthanc: OrthancPeer) -> None:
    result = echo(_node(orthanc), calling_ae=CALLING_AE)
    assert result.ok
    assert result.status == Status.SUCCESS
    assert result.latency_s > 0


def test_echo_reports_an_unreachable_destination() -> None:
    node = DicomNode("PACS", LOOPBACK, free_port())
    result = echo(node, calling_ae=CALLING_AE, timeout_s=5)
    assert not result.ok
    assert result.status is None
    assert str(node) in result.message


# --------------------------------------------------------------------------------------------
# Streaming files as they are, and parallel associations


@dataclass
class Stored:
    association: int
    sop_instance_uid: str
    dataset_bytes: bytes


@contextmanager
def recording_scp(
    *,
    transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    delay_s: float = 0.0,
    status_for: Callable[[int], int] = lambda _n: Status.SUCCESS,
) -> Iterator[tuple[DicomNode, list[Stored]]]:
    """An in-process Store SCP recording which association brought which bytes.

    ``status_for(n)`` answers the n-th request (1-based, over all associations); ``delay_s``
    makes each store slow enough that every association gets a share of the work.
    """
    stored: list[Stored] = []
    lock = threading.Lock()

    def handle_store(event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        assert request.DataSet is not None
        time.sleep(delay_s)
        with lock:
            stored.append(
                Stored(
                    association=id(event.assoc),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    dataset_bytes=request.DataSet.getvalue(),
                )
            )
            return status_for(len(stored))

    ae = AE(ae_title="TESTSCP")
    ae.add_supported_context(PositronEmissionTomographyImageStorage, list(transfer_syntaxes))
    server = ae.start_server(
        (LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    assert server is not None
    try:
        yield DicomNode("TESTSCP", LOOPBACK, server.server_address[1]), stored
    finally:
        server.shutdown()


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the File Meta Information, as it is on disk."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_files_are_streamed_as_they_are_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_pet_series(tmp_path / "series", 3, rows=16, cols=16)

    def no_decoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an uncompressed file was decoded before sending")

    monkeypatch.setattr(pydicom, "dcmread", no_decoding)
    with recording_scp() as (node, stored):
        report = send_instances(node, paths, calling_ae=CALLING_AE)
    monkeypatch.undo()

    assert report.sent == 3
    assert [s.dataset_bytes for s in stored] == [_dataset_bytes(p) for p in paths]


def test_a_destination_choosing_implicit_vr_gets_the_dataset_converted(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", 2)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    with recording_scp(transfer_syntaxes=[ImplicitVRLittleEndian]) as (node, stored):
        report = send_instances(node, paths, calling_ae=CALLING_AE)

    assert report.sent == 2
    for item, path in zip(stored, paths, strict=True):
        assert item.dataset_bytes != _dataset_bytes(path)  # re-encoded, not streamed
        received = read_dataset(
            BytesIO(item.dataset_bytes), is_implicit_VR=True, is_little_endian=True
        )
        original = pydicom.dcmread(path)
        assert received.SOPInstanceUID == original.SOPInstanceUID
        assert received.PixelData == original.PixelData


def test_parallel_associations_share_the_series_without_duplicates(tmp_path: Path) -> None:
    count = 2 * MIN_INSTANCES_PER_ASSOCIATION + 6  # enough work for three associations
    paths = write_pet_series(tmp_path / "series", count)
    recorded: list[str] = []

    with recording_scp(delay_s=0.005) as (node, stored):
        report = send_instances(
            node, paths, calling_ae=CALLING_AE, on_sent=recorded.append, associations=3
        )

    uids = [_uid(p) for p in paths]
    assert report.sent == count
    assert sorted(s.sop_instance_uid for s in stored) == sorted(uids)  # each exactly once
    assert sorted(recorded) == sorted(uids)
    assert len({s.association for s in stored}) == 3


def test_a_small_send_uses_one_association_whatever_is_allowed(tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", MIN_INSTANCES_PER_ASSOCIATION)
    recorded: list[str] = []

    with recording_scp() as (node, stored):
        send_instances(node, paths, calling_ae=CALLING_AE, on_sent=recorded.append, associations=3)

    assert len({s.association for s in stored}) == 1
    assert recorded == [_uid(p) for p in paths]  # one association keeps the order


def test_a_destination_serving_one_association_at_a_time_still_gets_everything(
    dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    # storescp without --fork accepts the extra associations only after the first ends.
    count = 2 * MIN_INSTANCES_PER_ASSOCIATION + 1
    paths = write_pet_series(tmp_path / "series", count)

    report = send_instances(_node(dcmtk_storescp), paths, calling_ae=CALLING_AE, associations=3)

    assert report.sent == count
    assert dcmtk_storescp.store_request_count() == count
    assert {_uid(p) for p in dcmtk_storescp.wait_received(count)} == {_uid(p) for p in paths}


def test_a_refusal_on_one_association_stops_them_all(tmp_path: Path) -> None:
    count = 2 * MIN_INSTANCES_PER_ASSOCIATION + 6
    paths = write_pet_series(tmp_path / "series", count)
    recorded: list[str] = []
    refuse_from = 20

    def status_for(n: int) -> int:
        return OUT_OF_RESOURCES if n >= refuse_from else Status.SUCCESS

    with (
        recording_scp(delay_s=0.005, status_for=status_for) as (node, stored),
        pytest.raises(DeliveryRefused, match="Out of Resources"),
    ):
        send_instances(node, paths, calling_ae=CALLING_AE, on_sent=recorded.append, associations=3)

    # Every association stops at its next request: at most one more each after the refusal.
    assert len(stored) <= refuse_from + 2
    accepted = {s.sop_instance_uid for s in stored[: refuse_from - 1]}
    assert set(recorded) == accepted


def test_parallel_resumption_after_a_crash_sends_no_instance_twice(tmp_path: Path) -> None:
    count = 2 * MIN_INSTANCES_PER_ASSOCIATION + 6
    paths = write_pet_series(tmp_path / "series", count)
    durable: list[str] = []

    def crash_after_twenty(sop_uid: str) -> None:
        durable.append(sop_uid)
        if len(durable) == 20:
            raise KeyboardInterrupt  # the gateway killed mid-send

    with recording_scp(delay_s=0.005) as (node, stored):
        with pytest.raises(KeyboardInterrupt):
            send_instances(
                node, paths, calling_ae=CALLING_AE, on_sent=crash_after_twenty, associations=3
            )
        # The other associations' acknowledged instances were still handed to on_sent.
        assert sorted(durable) == sorted(s.sop_instance_uid for s in stored)
        report = send_instances(
            node,
            paths,
            calling_ae=CALLING_AE,
            skip_sop_uids=list(durable),
            on_sent=durable.append,
            associations=3,
        )

    received = [s.sop_instance_uid for s in stored]
    assert len(received) == len(set(received)) == count
    assert report.sent + report.skipped == count
