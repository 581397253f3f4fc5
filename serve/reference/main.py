"""Entry points of the reference service: ``petray reference-server`` and an in-thread runner for
tests and ``petray demo``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from petray.errors import ConfigurationError
from petray.settings import Settings
from serve.reference.app import create_reference_app
from serve.reference.config import ReferenceConfig

logger = logging.getLogger(__name__)

_SWITCH_ARGS = ("slow", "delay", "fail_5xx", "refuse", "drop_callback", "malicious")
_STARTUP_TIMEOUT_S = 15.0


def config_from_args(args: argparse.Namespace) -> ReferenceConfig:
    """Environment first, then whichever switch options the CLI defines (``--slow`` ...)."""
    licences = getattr(args, "licenses", None)
    config = ReferenceConfig.from_env(licences_path=Path(licences) if licences else None)
    changes = {
        name: getattr(args, name) for name in _SWITCH_ARGS if getattr(args, name, None) is not None
    }
    if changes:
        try:
            switches = config.switches.updated(changes)
        except ValueError as exc:
            raise ConfigurationError(f"invalid reference-server switch: {exc}") from None
        config = ReferenceConfig(**{**config.__dict__, "switches": switches})
    return config


def run_reference_server(args: argparse.Namespace) -> int:
    """``petray reference-server``: serve in the foreground until Ctrl-C / SIGTERM."""
    config = config_from_args(args)
    app = create_reference_app(config)
    active = config.switches.model_dump(exclude_defaults=True)
    logger.info(
        "reference service on http://%s:%d, shared folder %s, callback %s, switches %s",
        args.host,
        args.port,
        config.shared_dir,
        config.callback_url,
        active or "none",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


@dataclass
class RunningServer:
    """A reference service served by uvicorn on a background thread."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


@contextlib.contextmanager
def running_reference(
    settings: Settings, *, port: int = 0, **config: Any
) -> Iterator[RunningServer]:
    """The reference service for a petray configured by ``settings``, on a background thread."""
    running = start_in_thread(
        create_reference_app(ReferenceConfig.for_settings(settings, **config)), port=port
    )
    try:
        yield running
    finally:
        running.stop()


def start_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout_s: float = _STARTUP_TIMEOUT_S,
) -> RunningServer:
    """Serve ``app`` (a reference app or any ASGI app) on ``host:port``; port 0 picks a free one.

    The socket is bound here, before uvicorn starts, so the port is known and cannot be taken by
    someone else between choosing and binding it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="reference-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the reference service did not start")
        time.sleep(0.02)
    return RunningServer(server=server, thread=thread, host=host, port=bound_port)
