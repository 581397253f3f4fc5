"""Store SCP processes sharing the DICOM port (issue 13, SO_REUSEPORT), without Ray.

Two listeners on one port stand for two Store SCP processes: both bind, every association is
served while either listens, each keeps its partial files apart, and the first process's check
finds a port somebody already holds (a second gateway must not join it silently).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from actors.names import (
    STORE_SCP,
    filter_worker_name,
    filter_workers_in,
    store_scp_name,
    store_scp_siblings_in,
)
from actors.store_scp import check_port_free, incoming_dir
from petray.db.models import Instance
from petray.dicom.ingest import InstanceStore
from petray.dicom.scp import IngestLimits, StoreService
from petray.settings import load_settings
from petray.site.siteconfig import Listener
from tests.support.peers import LOOPBACK, free_port, run_echoscu, run_storescu, write_pet_series

AE_TITLE = "PETRAY"


def _service(root: Path, sessions: sessionmaker[Session], index: int) -> StoreService:
    root.mkdir(parents=True, exist_ok=True)
    store = InstanceStore(
        root, sessions, min_free_bytes=0, fsync=False, incoming=incoming_dir(index)
    )
    return StoreService(store, sessions, on_instance=lambda _: None, limits=IngestLimits())


def test_two_processes_share_the_port_and_either_serves_alone(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    listener = Listener(ae_title=AE_TITLE, port=free_port(), bind=LOOPBACK)
    check_port_free(listener)  # nobody holds it yet
    first = _service(tmp_path / "instances", sqlite_sessions, 0).start(listener, reuse_port=True)
    second = _service(tmp_path / "instances", sqlite_sessions, 1).start(listener, reuse_port=True)
    try:
        with pytest.raises(OSError):
            check_port_free(listener)  # held: a second gateway is refused before it binds
        for _ in range(4):
            assert run_echoscu(port=listener.port, called_ae=AE_TITLE).returncode == 0
        first.shutdown()
        files = write_pet_series(tmp_path / "series", count=3)
        sent = run_storescu(files, port=listener.port, called_ae=AE_TITLE)
        assert sent.returncode == 0, sent.stderr
        with sqlite_sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 3
    finally:
        for server in (first, second):
            if server.socket.fileno() != -1:
                server.shutdown()


def test_a_port_held_by_another_program_is_found() -> None:
    listener = Listener(ae_title=AE_TITLE, port=free_port(), bind=LOOPBACK)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain:
        plain.bind((listener.bind, listener.port))
        plain.listen()
        with pytest.raises(OSError):
            check_port_free(listener)


def test_each_process_cleans_only_its_own_partial_files(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    root = tmp_path / "instances"
    assert incoming_dir(0) != incoming_dir(1)
    for index in (0, 1):
        partial = root / incoming_dir(index) / "abc.part"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"half an instance")
    store = InstanceStore(root, sqlite_sessions, min_free_bytes=0, incoming=incoming_dir(1))
    assert store.remove_leftovers() == 1
    assert (root / incoming_dir(0) / "abc.part").exists()  # a live sibling's file stays


def test_the_association_limit_is_shared_between_the_processes(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, dicom_max_associations=9)
    assert IngestLimits.from_settings(settings).max_associations == 9
    assert IngestLimits.from_settings(settings, processes=2).max_associations == 5
    assert IngestLimits.from_settings(settings, processes=16).max_associations == 1


def test_the_named_actors_tell_siblings_and_filter_workers_apart() -> None:
    # The health page lists the Ray namespace's actors once and sorts them out from that list.
    names = [
        "petray.store_scu",
        store_scp_name(2),
        STORE_SCP,
        filter_worker_name("abcdef0123456789", 1),
        store_scp_name(1),
        filter_worker_name("abcdef0123456789", 0),
        f"{STORE_SCP}u",
    ]
    assert store_scp_siblings_in(names) == [store_scp_name(1), store_scp_name(2)]
    assert store_scp_name(1) == f"{STORE_SCP}.2"
    assert filter_workers_in(names) == [
        filter_worker_name("abcdef0123456789", 0),
        filter_worker_name("abcdef0123456789", 1),
    ]
