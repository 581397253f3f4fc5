"""``petray start``: the gateway in the foreground (Ray, the actors, the HTTP app)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.gateway_lock import GatewayLock, acquire_gateway_lock
from petray.production import production_problems
from petray.radiopharm import seed_radiopharmaceuticals
from petray.settings import Settings, load_settings
from petray.siteconfig import get_site_config

logger = logging.getLogger(__name__)


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


def run_start(args: argparse.Namespace) -> int:
    settings = load_settings()
    # Issue 9: every development secret is refused at once, before Ray starts (seconds).
    problems = production_problems(settings) if settings.production else []
    for problem in problems:
        print(f"petray: {problem}", file=sys.stderr)
    if problems:
        return 2
    # Before importing Ray (seconds): a second gateway on this home is refused at once with one
    # line and exit 2 (GatewayAlreadyRunning is a PetrayError), and held until this process ends.
    with acquire_gateway_lock(settings.home, settings.resolved_database_url) as lock:
        return _serve(settings, lock)


def _serve(settings: Settings, lock: GatewayLock) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    from actors.gateway import Gateway

    gateway = Gateway(settings, lock=lock).start()
    # After Ray's start-up: its core worker installs its own fatal-signal handlers, which would
    # otherwise turn SIGTERM into an abort instead of this clean shutdown.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    listener = gateway.listener
    print(
        f"petray running: DICOM {listener['ae_title']}@{listener['bind']}:{listener['port']}, "
        f"console http://{settings.http_host}:{settings.http_port}/"
        + (f", Ray dashboard {gateway.dashboard_url}" if settings.dashboard else ""),
        flush=True,
    )
    try:
        stop.wait()
    finally:
        gateway.stop()
    return 0
