"""StoreSCP actor: hosts the pynetdicom listener and forwards each stored instance."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import pydicom.config
import ray
from pynetdicom.transport import ThreadedAssociationServer
from ray.util import metrics

from actors.names import COMPILATOR, NAMESPACE
from actors.runtime import init_actor_process
from petray.db.engine import unit_of_work
from petray.ingest import InstanceStore, ReceivedInstance
from petray.scp import StoreService
from petray.settings import Settings
from petray.siteconfig import Listener, effective_listener

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StoreScpActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions = init_actor_process(settings)
        # pydicom's own validation warnings quote offending values (possibly patient data);
        # extract_instance_header reports the problems without them.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        settings.instances_dir.mkdir(parents=True, exist_ok=True)
        store = InstanceStore(
            settings.instances_dir,
            self._sessions,
            min_free_bytes=settings.min_free_disk_mb * 2**20,
            fsync=settings.fsync,
        )
        self._service = StoreService(store, self._sessions, on_instance=self._forward)
        self._compilator = ray.get_actor(COMPILATOR, namespace=NAMESPACE)
        self._server: ThreadedAssociationServer | None = None
        self._listener: Listener | None = None
        self._m_received = metrics.Counter("petray_instances_received", "PET instances stored")
        self._m_bytes = metrics.Counter("petray_bytes_received", "Bytes of stored instances")

    def _forward(self, received: ReceivedInstance) -> None:
        # Called from pynetdicom's association thread after the instance is committed.
        self._m_received.inc()
        self._compilator.add_instance.remote(received)

    def start(self) -> dict[str, Any]:
        with unit_of_work(self._sessions) as session:
            listener = effective_listener(self._settings, session=session)
        if self._server is not None and listener == self._listener:
            return asdict(listener)
        self.stop()
        self._server = self._service.start(listener)
        self._listener = listener
        return asdict(listener)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def status(self) -> dict[str, Any]:
        counters = asdict(self._service.counters)
        counters["listening"] = self._server is not None
        if self._listener is not None:
            counters["ae_title"] = self._listener.ae_title
            counters["port"] = self._listener.port
        return counters
