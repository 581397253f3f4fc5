"""Associations whose own reactor waits for work (petray.dicom.reactor): idle, they use next to
no CPU, yet releases, aborts and the idle timeout are handled as pynetdicom's loop handles them,
on both sides (the Store SCU's associations out, the Store SCP's in)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from petray.dicom.direct_store import ResponseReader
from petray.dicom.ingest import InstanceStore
from petray.dicom.scp import IngestLimits, StoreService
from petray.dicom.scu import DicomNode, open_association
from petray.site.siteconfig import Listener
from tests.support.peers import LOOPBACK, free_port, start_storescp

PET = build_context(PositronEmissionTomographyImageStorage)
# pynetdicom's own loop, waking every millisecond, used 2-4 % of a CPU: 40-80 ms in the two
# seconds measured (the kernel counts CPU time in 10 ms ticks).
IDLE_S = 2.0
IDLE_CPU_S = 0.03


def _thread_cpu_s(thread: threading.Thread) -> float:
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu_s(thread: threading.Thread, seconds: float = IDLE_S) -> float:
    before = _thread_cpu_s(thread)
    time.sleep(seconds)
    return _thread_cpu_s(thread) - before


def _until(condition: Callable[[], bool], timeout_s: float = 2.0) -> float:
    """Seconds until ``condition`` holds (it must within ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s
        time.sleep(0.005)
    return time.monotonic() - started


def test_an_idle_association_out_waits_and_still_releases_at_once(tmp_path: Path) -> None:
    with start_storescp(tmp_path / "scp") as scp:
        node = DicomNode(scp.aet, scp.host, scp.port)
        with open_association(node, calling_ae="PETRAY", contexts=[PET], timeout_s=10) as assoc:
            # Both of its threads: the DUL's reads wait too (petray.dicom.direct_store).
            assert isinstance(assoc.dul._is_transport_event, ResponseReader)
            dul_before = _thread_cpu_s(assoc.dul)
            assert _idle_cpu_s(assoc) < IDLE_CPU_S
            assert _thread_cpu_s(assoc.dul) - dul_before < IDLE_CPU_S
            started = time.monotonic()
        assert assoc.is_released
        assert time.monotonic() - started < 0.5
        _until(lambda: not assoc.is_alive())


def test_an_idle_association_out_still_times_out(tmp_path: Path) -> None:
    # The idle timeout (the network timeout) is checked by the association's reactor.
    with start_storescp(tmp_path / "scp") as scp:
        node = DicomNode(scp.aet, scp.host, scp.port)
        with open_association(node, calling_ae="PETRAY", contexts=[PET], timeout_s=0.5) as assoc:
            waited = _until(lambda: assoc.is_aborted, timeout_s=3.0)
    assert 0.3 < waited < 1.5


@contextmanager
def _store_service(tmp_path: Path, sessions: sessionmaker[Session]) -> Iterator[Any]:
    root = tmp_path / "instances"
    root.mkdir()
    store = InstanceStore(root, sessions, min_free_bytes=0, fsync=False)
    service = StoreService(store, sessions, on_instance=lambda _: None, limits=IngestLimits())
    server = service.start(Listener(ae_title="PETRAY", port=free_port(), bind=LOOPBACK))
    try:
        yield server
    finally:
        server.shutdown()


def _associate(server: Any) -> tuple[Association, Association]:
    """(requestor, the Store SCP's acceptor) of a new association."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(PositronEmissionTomographyImageStorage)
    requestor = ae.associate(LOOPBACK, server.server_address[1], ae_title="PETRAY")
    assert requestor.is_established
    _until(lambda: len(server.active_associations) == 1)
    [acceptor] = server.active_associations
    return requestor, acceptor


def test_an_idle_association_in_waits_and_is_released_at_once(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    with _store_service(tmp_path, sqlite_sessions) as server:
        requestor, acceptor = _associate(server)
        assert _idle_cpu_s(acceptor) < IDLE_CPU_S
        started = time.monotonic()
        requestor.release()
        assert requestor.is_released
        assert time.monotonic() - started < 0.5
        _until(lambda: acceptor.is_released and not acceptor.is_alive())


def test_a_peer_abort_ends_an_idle_association_in_at_once(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    with _store_service(tmp_path, sqlite_sessions) as server:
        requestor, acceptor = _associate(server)
        time.sleep(0.2)
        requestor.abort()
        assert _until(lambda: acceptor.is_aborted and not acceptor.is_alive()) < 0.5
