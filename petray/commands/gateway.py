"""``petray start``: the gateway in the foreground (Ray, the actors, the HTTP app)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.radiopharm import seed_radiopharmaceuticals
from petray.settings import Settings, load_settings
from petray.siteconfig import get_site_config

logger = logging.getLogger(__name__)
DASHBOARD_PORT = 8265


def prepare_storage(settings: Settings) -> None:
    """Directories, schema and seed data: everything the actors expect to find."""
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with unit_of_work(make_sessionmaker(engine)) as session:
            get_site_config(session=session)
            seed_radiopharmaceuticals(session=session)
    finally:
        engine.dispose()


class Gateway:
    """Ray (local, or the cluster at RAY_ADDRESS), the pipeline actors and the HTTP app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pipeline: Any = None
        self._started_ray = False

    def start(self) -> Gateway:
        import ray

        from actors.names import FILTER_RESOURCE, NAMESPACE
        from actors.pipeline import build_pipeline
        from serve.deployment import start_http

        prepare_storage(self.settings)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = os.environ.get("RAY_ADDRESS")
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "include_dashboard": self.settings.dashboard,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": DASHBOARD_PORT,
            "logging_level": logging.WARNING,
        }
        if not address:
            # The gateway node offers the filter resource itself; worker nodes add theirs.
            options["resources"] = {FILTER_RESOURCE: self.settings.filter_workers}
        if not ray.is_initialized():
            ray.init(address=address, **options)
            self._started_ray = True
        self._pipeline = build_pipeline(self.settings)
        start_http(self.settings)
        return self

    @property
    def listener(self) -> dict[str, Any]:
        return dict(self._pipeline.listener) if self._pipeline else {}

    def stop(self) -> None:
        import ray
        from ray import serve

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


def run_start(args: argparse.Namespace) -> int:
    settings = load_settings()
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    gateway = Gateway(settings).start()
    listener = gateway.listener
    print(
        f"petray running: DICOM {listener['ae_title']}@{listener['bind']}:{listener['port']}, "
        f"console http://{settings.http_host}:{settings.http_port}/"
        + (f", Ray dashboard http://127.0.0.1:{DASHBOARD_PORT}" if settings.dashboard else ""),
        flush=True,
    )
    try:
        stop.wait()
    finally:
        gateway.stop()
    return 0
