"""StoreSCP actor: hosts the pynetdicom listener and forwards each stored instance."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import asdict, replace
from typing import Any

import pydicom.config
import ray
from pynetdicom.transport import ThreadedAssociationServer
from ray.util import metrics

from actors.names import COMPILATOR, NAMESPACE, store_scp_siblings_in
from actors.runtime import (
    actor_names,
    current_actor_restarts,
    init_actor_process,
    restore_priority,
)
from petray.db.engine import unit_of_work
from petray.dicom.ingest import INCOMING_DIR, InstanceStore, ReceivedInstance
from petray.dicom.scp import IngestLimits, StoreService
from petray.dicom.tls import server_context
from petray.settings import Settings
from petray.site.siteconfig import Listener, effective_listener

logger = logging.getLogger(__name__)

# Messages handed to the Compilator in one call at most; a burst rarely queues more.
MAX_FORWARD_BATCH = 256
# Small against the 1 s budget from last slice to dispatch (issue 2); the Compilator gathers
# for as long again before its commit. A Ray call costs this process about 0.3 ms of its GIL.
FORWARD_WINDOW_S = 0.02
# A restarted SCP may find its port held for a moment by the process it replaces.
LISTEN_ATTEMPTS = 20
LISTEN_RETRY_S = 0.5
# Attempts of the listen call an SCP actor makes to itself as it (re)starts.
SELF_CALL_RETRIES = 5


def incoming_dir(index: int) -> str:
    """Partial files of Store SCP process ``index``: its own, cleaned when it (re)starts."""
    return INCOMING_DIR if index == 0 else f"{INCOMING_DIR}-{index + 1}"


def check_port_free(listener: Listener) -> None:
    """OSError when something already listens on the listener's port.

    The Store SCP processes share their port (SO_REUSEPORT), which would also let a second
    gateway of the same user join it silently and take half of the associations: the first
    process of a gateway makes sure nobody holds the port before any of them binds it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind((listener.bind, listener.port))


def store_scp_siblings() -> list[str]:
    """Names of the Store SCP processes besides the first that exist (issue 13), sorted."""
    return store_scp_siblings_in(actor_names())


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StoreScpActor:
    """Store SCP process ``index`` of ``processes`` sharing the DICOM port (issue 13)."""

    def __init__(self, settings: Settings, index: int = 0, processes: int = 1) -> None:
        self._settings = settings
        self._index, self._processes = index, processes
        self._sessions = init_actor_process(settings)
        # A scanner waits for every C-STORE answer: on a busy gateway a niced SCP is starved by
        # the filter workers and the senders slow down.
        restore_priority("Store SCP")
        # pydicom's own validation warnings quote offending values (possibly patient data);
        # extract_instance_header reports the problems without them.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        settings.instances_dir.mkdir(parents=True, exist_ok=True)
        store = InstanceStore(
            settings.instances_dir,
            self._sessions,
            min_free_bytes=settings.min_free_disk_mb * 2**20,
            fsync=settings.fsync,
            incoming=incoming_dir(index),
        )
        # Before listening: unacknowledged partial files of a crashed run are resent anyway.
        if removed := store.remove_leftovers():
            logger.info("removed %d partial files of unacknowledged instances", removed)
        self._service = StoreService(
            store,
            self._sessions,
            on_instance=self._forward,
            limits=IngestLimits.from_settings(settings, processes=processes),
        )
        self._compilator = ray.get_actor(COMPILATOR, namespace=NAMESPACE)
        # Read once: a missing or bad certificate fails the actor's start with the file named.
        self._tls_context = (
            server_context(
                settings.dicom_tls_cert, settings.dicom_tls_key, ca=settings.dicom_tls_ca
            )
            if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None
            else None
        )
        # The plain listener and the TLS one (issue 10), each when configured.
        self._servers: list[ThreadedAssociationServer] = []
        # Only a first incarnation checks that nobody holds the port: a restarted one finds
        # it held by its siblings.
        self._probe_ports = index == 0 and current_actor_restarts() == 0
        self._listener: Listener | None = None
        self._m_received = metrics.Counter("petray_instances_received", "PET instances stored")
        self._m_bytes = metrics.Counter("petray_bytes_received", "Bytes of stored instances")
        # The Ray call to the Compilator is made by a forwarder thread, after the sender has its
        # answer, not in the C-STORE handler: file and row are already committed, and a message
        # lost in a crash is found again by the Compilator's restore (unassigned instances).
        self._outbox: queue.SimpleQueue[ReceivedInstance] = queue.SimpleQueue()
        self._forwarder = threading.Thread(
            target=self._run_forwarder, name="petray-forward", daemon=True
        )
        self._forwarder.start()
        # A restarted actor listens again by itself (issue 8); at gateway start the pipeline's
        # own start call finds it listening already. While a restarted actor constructs, the
        # GCS still has it RESTARTING and a call to itself can fail at once ("The actor is
        # restarting"): retried, Ray sends it again once the actor is alive.
        ray.get_runtime_context().current_actor.listen.options(
            max_task_retries=SELF_CALL_RETRIES
        ).remote()

    def listen(self) -> None:
        """Open the listener, retrying while the port is still held (a dying predecessor)."""
        for attempt in range(LISTEN_ATTEMPTS):
            try:
                self.start()
                return
            except OSError as exc:
                logger.warning("Store SCP cannot listen yet (%s); attempt %d", exc, attempt + 1)
                time.sleep(LISTEN_RETRY_S)
        logger.error("Store SCP could not open its port after %d attempts", LISTEN_ATTEMPTS)

    def _forward(self, received: ReceivedInstance) -> None:
        # Called from pynetdicom's DUL thread after the instance is committed.
        self._outbox.put(received)

    def _run_forwarder(self) -> None:
        while True:
            batch = [self._outbox.get()]
            # A Ray call costs the DUL thread a few hundred microseconds of GIL: gather what
            # arrives meanwhile (a sender streams an instance every few ms) into one call.
            time.sleep(FORWARD_WINDOW_S)
            while len(batch) < MAX_FORWARD_BATCH:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._compilator.add_instances.remote(batch)
                self._m_received.inc(len(batch))
                self._m_bytes.inc(sum(r.size_bytes for r in batch))
            except Exception:
                # The rows are committed: the Compilator picks them up on its next restore.
                logger.exception("could not forward %d instances to the compilator", len(batch))

    def start(self) -> dict[str, Any]:
        with unit_of_work(self._sessions) as session:
            listener = effective_listener(self._settings, session=session)
        if self._servers and listener == self._listener:
            return self._describe(listener)
        self.stop()
        shared = self._processes > 1
        tls_listener = replace(listener, port=self._settings.dicom_tls_port)
        try:
            if shared and self._probe_ports:
                # A port this process held already is held by its siblings too.
                held = self._listener
                if self._settings.dicom_plain and (held is None or held.port != listener.port):
                    check_port_free(listener)
                if self._tls_context is not None and held is None:
                    check_port_free(tls_listener)
            if self._settings.dicom_plain:
                self._servers.append(self._service.start(listener, reuse_port=shared))
            if self._tls_context is not None:
                self._servers.append(
                    self._service.start(
                        tls_listener, ssl_context=self._tls_context, reuse_port=shared
                    )
                )
        except BaseException:
            self.stop()  # both or neither: a half-open gateway would look healthy
            raise
        self._listener = listener
        return self._describe(listener)

    def _describe(self, listener: Listener) -> dict[str, Any]:
        described = asdict(listener)
        if not self._settings.dicom_plain:
            described["port"] = None
        described["tls_port"] = self._settings.dicom_tls_port if self._tls_context else None
        return described

    def stop(self) -> None:
        while self._servers:
            self._servers.pop().shutdown()

    def status(self) -> dict[str, Any]:
        counters = asdict(self._service.counters)
        counters["listening"] = bool(self._servers)
        counters["open_associations"] = self._service.open_associations
        if self._listener is not None:
            counters.update(self._describe(self._listener))
        return counters
