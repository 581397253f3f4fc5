"""``petray start``: the gateway in the foreground (Ray, the actors, the HTTP app)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from petray.errors import PetrayError
from petray.gateway_lock import GatewayLock, acquire_gateway_lock
from petray.logfile import install_log_file
from petray.settings import Settings, load_settings
from petray.site.preflight import Verdict, can_run, run_checks
from petray.site.production import production_problems

logger = logging.getLogger(__name__)


def run_start(args: argparse.Namespace) -> int:
    settings = load_settings()
    # Issue 9: every development secret is refused at once, before Ray starts (seconds).
    problems = production_problems(settings) if settings.production else []
    for problem in problems:
        print(f"petray: {problem}", file=sys.stderr)
    if problems:
        return 2
    # Issue 10: what would otherwise fail minutes later inside Ray, with a traceback (an
    # unreachable database, a port in use, an unreadable certificate), is found now.
    checks = run_checks(fatal_only=True)
    failed = [check.name for check in checks if check.verdict == Verdict.FAIL]
    if failed == ["ports"]:
        # Likeliest cause: a gateway on this home holds them, which the lock says best.
        acquire_gateway_lock(settings.home, settings.resolved_database_url).release()
    for check in checks:
        # An empty or older schema is no problem here: the start migrates it.
        migrates = check.name == "database" and check.verdict == Verdict.WARN
        if check.verdict != Verdict.OK and not migrates:
            print(f"petray: {check.line()}", file=sys.stderr)
    if not can_run(checks):
        print("petray: not started (`petray check` runs every check)", file=sys.stderr)
        return 2
    # Before importing Ray (seconds): a second gateway on this home is refused at once with one
    # line and exit 2 (GatewayAlreadyRunning is a PetrayError), and held until this process ends.
    with acquire_gateway_lock(settings.home, settings.resolved_database_url) as lock:
        install_log_file(settings.home)  # the same file as the actors (issue 11)
        return _serve(settings, lock)


def _say(line: str) -> None:
    print(f"petray: {line}", flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _running_lines(settings: Settings, listener: dict[str, Any], gateway: Any) -> list[str]:
    ae, bind = listener["ae_title"], listener["bind"]
    lines = []
    if listener.get("port"):
        lines.append(f"listening on DICOM {ae}@{bind}:{listener['port']}")
    if listener.get("tls_port"):
        lines.append(f"listening on DICOM TLS {ae}@{bind}:{listener['tls_port']}")
    lines.append(
        f"listening on {settings.http_scheme}://{settings.http_host}:{settings.http_port}/ "
        f"(console, API, callback {settings.resolved_callback_url})"
    )
    if gateway.dashboard_url:
        lines.append(f"Ray dashboard {gateway.dashboard_url}")
    if gateway.metrics_url:
        lines.append(f"Prometheus metrics {gateway.metrics_url}")
    return lines


def _serve(settings: Settings, lock: GatewayLock) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    # Read by Ray when it is imported: a service's log has no use for colour codes, and Ray's
    # log deduplication wraps its "[repeated Nx]" notes in them whatever RAY_COLOR_PREFIX says.
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from petray.bootstrap import Gateway

    gateway = Gateway(settings, lock=lock, progress=_say)
    try:
        gateway.start()
    except PetrayError:
        raise  # already one clear line (petray.cli prints it)
    except Exception as exc:
        # Issue 10: one line and where to look, never a 90-line traceback.
        logger.debug("gateway start failed", exc_info=True)
        print(f"petray: could not start: {_first_line(exc)}", file=sys.stderr)
        print(
            f"petray: hint: Ray's logs are in {gateway.ray_logs}; `petray check` tests the "
            "settings; `petray -v start` shows the traceback",
            file=sys.stderr,
        )
        return 1
    # After Ray's start-up: its core worker installs its own fatal-signal handlers, which would
    # otherwise turn SIGTERM into an abort instead of this clean shutdown.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    listener = gateway.listener
    for line in _running_lines(settings, listener, gateway):
        _say(line)
    port = listener.get("port") or listener.get("tls_port")
    print(
        f"petray running: DICOM {listener['ae_title']}@{listener['bind']}:{port}, "
        f"console {settings.http_scheme}://{settings.http_host}:{settings.http_port}/",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        gateway.stop()
    return 0
