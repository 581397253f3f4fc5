"""The gateway process: Ray (local, or the cluster at RAY_ADDRESS), the actors, the HTTP app."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray import serve

from actors.names import FILTER_RESOURCE, NAMESPACE
from actors.pipeline import Pipeline, build_pipeline
from petray.commands.gateway import prepare_storage
from petray.settings import Settings
from serve.deployment import start_http

logger = logging.getLogger(__name__)
DASHBOARD_PORT = 8265


class Gateway:
    """Ray (local, or the cluster at RAY_ADDRESS), the pipeline actors and the HTTP app."""

    def __init__(self, settings: Settings, *, log_to_driver: bool = True) -> None:
        self.settings = settings
        self._log_to_driver = log_to_driver
        self._pipeline: Pipeline | None = None
        self._started_ray = False

    def start(self) -> Gateway:
        prepare_storage(self.settings)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = os.environ.get("RAY_ADDRESS")
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "include_dashboard": self.settings.dashboard,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": DASHBOARD_PORT,
            "logging_level": logging.WARNING,
            "log_to_driver": self._log_to_driver,
        }
        if not address:
            # The gateway node offers the filter resource itself; worker nodes add theirs.
            options["resources"] = {FILTER_RESOURCE: self.settings.filter_workers}
            # A single-node Ray has no reason to listen beyond loopback.
            options["_node_ip_address"] = "127.0.0.1"
        if not ray.is_initialized():
            ray.init(address=address, **options)
            self._started_ray = True
        try:
            self._pipeline = build_pipeline(self.settings)
            start_http(self.settings)
        except BaseException:
            # Leave nothing half-started behind (e.g. the HTTP port was taken).
            self.stop()
            raise
        return self

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{DASHBOARD_PORT}"

    @property
    def listener(self) -> dict[str, Any]:
        return dict(self._pipeline.listener) if self._pipeline else {}

    def stop(self) -> None:
        try:
            serve.shutdown()
        except Exception:
            logger.exception("serve shutdown failed")
        if self._pipeline is not None:
            self._pipeline.stop()
            self._pipeline = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
