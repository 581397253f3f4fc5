"""The gateway process: Ray (local, or the cluster at RAY_ADDRESS), the actors, the HTTP app."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import serve

from actors.http import start_http
from actors.names import FILTER_RESOURCE, NAMESPACE
from actors.pipeline import Pipeline, build_pipeline
from actors.ray_loopback import loopback_only
from petray.gateway_lock import GatewayLock, acquire_gateway_lock
from petray.logformat import configure_logging
from petray.ray_leftovers import (
    RUN_MARKER,
    new_record,
    reap_previous_run,
    record_path,
    write_record,
)
from petray.settings import Settings
from petray.site.preflight import DASHBOARD_DEFAULT_PORT, free_port, port_free
from petray.site.storage import prepare_storage
from petray.watchdog import Watchdog

logger = logging.getLogger(__name__)
# Where a local Ray keeps its logs (a session directory per run, "session_latest" the newest).
RAY_LOG_HINT = "/tmp/ray/session_latest/logs"


def _silent(_line: str) -> None:
    pass


class Gateway:
    """Ray (local, or the cluster at RAY_ADDRESS), the pipeline actors and the HTTP app."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_to_driver: bool = True,
        lock: GatewayLock | None = None,
        progress: Callable[[str], None] = _silent,
    ) -> None:
        """``lock``: the home's gateway lock when the caller already holds it (``petray demo``
        takes it before preparing the home); without it, :meth:`start` takes it.
        ``progress`` is told each start-up step as it begins ("starting Ray…").
        """
        self.settings = settings
        self._progress = progress
        self.dashboard_port: int | None = None
        self.cluster_dashboard = ""  # host:port of a joined cluster's dashboard
        self.metrics_port: int | None = None
        self.ray_logs: str = RAY_LOG_HINT
        self._log_to_driver = log_to_driver
        self._pipeline: Pipeline | None = None
        self._started_ray = False
        self._lock = lock
        self._owns_lock = False
        self._watchdog: Watchdog | None = None

    def start(self) -> Gateway:
        if self._lock is None:
            self._lock = acquire_gateway_lock(
                self.settings.home, self.settings.resolved_database_url
            )
            self._owns_lock = True
        try:
            return self._start()
        except BaseException:
            # Leave nothing half-started behind (e.g. the HTTP port was taken).
            self.stop()
            raise

    def _start(self) -> Gateway:
        # Holding the lock, a recorded earlier gateway is dead: whatever of its Ray still runs
        # would keep serving its ports or finishing its tasks alongside ours (issue 8).
        reap_previous_run(self.settings.home)
        self._progress("preparing storage and database")
        prepare_storage(self.settings)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Service logs go to a journal or a file, where colour codes are noise (issue 10).
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        address = os.environ.get("RAY_ADDRESS")
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "include_dashboard": self.settings.dashboard,
            "dashboard_host": "127.0.0.1",
            "logging_level": logging.WARNING,
            "log_to_driver": self._log_to_driver,
        }
        if self.settings.log_format == "json":
            # Actors log JSON too, and Ray drops its "(Actor pid=...)" prefix so that every
            # forwarded line still parses on its own.
            options["logging_config"] = ray.LoggingConfig(encoding="JSON", log_level="INFO")
        if not address:
            # The gateway node offers the filter resource itself; worker nodes add theirs.
            options["resources"] = {FILTER_RESOURCE: self.settings.filter_workers}
            # A single-node Ray has no reason to listen beyond loopback.
            options["_node_ip_address"] = "127.0.0.1"
            # Fixed ports when configured (a firewall rule, Prometheus' scrape target), else
            # free ones: a second Ray on the host must not make this start fail (issue 10).
            self.metrics_port = self.settings.metrics_port or free_port()
            options["_metrics_export_port"] = self.metrics_port
            if self.settings.dashboard:
                self.dashboard_port = self.settings.dashboard_port or (
                    DASHBOARD_DEFAULT_PORT
                    if port_free("127.0.0.1", DASHBOARD_DEFAULT_PORT)
                    else free_port()
                )
                options["dashboard_port"] = self.dashboard_port
        if not ray.is_initialized():
            self._progress("starting Ray…" if not address else f"joining Ray at {address}…")
            if address:
                context = ray.init(address=address, **options)
                # The cluster's own dashboard (on its head), not a local port (issue 12).
                self.cluster_dashboard = context.dashboard_url or ""
            else:
                self._init_local_ray(options)
            self._started_ray = True
            if self.settings.log_format == "json":
                # Ray's LoggingConfig adds its own handler to this process's root logger too:
                # keep one handler, so that every line is printed once.
                configure_logging(logging.getLogger().level, "json")
        self._progress("starting the pipeline…")
        # The DICOM port opens part-way (actors/pipeline.py); Serve starts once every actor is
        # up, so that the console's first health answer finds them idle and answering.
        self._pipeline = build_pipeline(self.settings)
        self._progress("pipeline ready; starting HTTP…")
        # The console links to the dashboard on the port chosen above.
        start_http(self.settings.model_copy(update={"dashboard_port": self.dashboard_port}))
        return self

    def _init_local_ray(self, options: dict[str, Any]) -> None:
        """Start a local Ray that cannot outlive this process: tag every process it starts,
        record the run, and have a watchdog kill the run should this process die unannounced.
        """
        path = record_path(self.settings.home)
        record = new_record()
        write_record(path, record)
        self._watchdog = Watchdog.start(run_id=record.run_id, record=path)
        # Ray's processes inherit the driver's environment, and its workers the raylet's.
        os.environ[RUN_MARKER] = record.run_id
        try:
            # "local", not None: with no address Ray joins whatever cluster
            # /tmp/ray/ray_current_cluster names (anyone's `ray start` on this host).
            # Every listener of the run on 127.0.0.1 (issue 9: see actors/ray_loopback.py).
            with loopback_only():
                ray.init(address="local", **options)
        finally:
            del os.environ[RUN_MARKER]
        node = ray._private.worker._global_node  # no public API names the session directory
        session_dir = node.get_session_dir_path() if node is not None else None
        if session_dir:
            self.ray_logs = str(Path(session_dir) / "logs")
        write_record(path, dataclasses.replace(record, session_dir=session_dir))

    @property
    def dashboard_url(self) -> str:
        if self.cluster_dashboard:
            return f"http://{self.cluster_dashboard}"
        return f"http://127.0.0.1:{self.dashboard_port}" if self.dashboard_port else ""

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else ""

    @property
    def listener(self) -> dict[str, Any]:
        return dict(self._pipeline.listener) if self._pipeline else {}

    def stop(self) -> None:
        # Without Ray (a start that failed before ray.init), serve.shutdown() would start one.
        if ray.is_initialized():
            try:
                serve.shutdown()  # type: ignore[no-untyped-call]
            except Exception:
                logger.exception("serve shutdown failed")
        if self._pipeline is not None:
            self._pipeline.stop()
            self._pipeline = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._owns_lock and self._lock is not None:
            self._lock.release()
            self._lock = None
            self._owns_lock = False
