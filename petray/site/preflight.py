"""Preflight: can a gateway run here, with these settings, on this network? (issue 10)

Each check returns one :class:`Check` line. ``fail`` means the gateway cannot do its job;
``warn`` means it can, but something looks wrong (a misspelt variable, a callback URL the
service cannot reach). Checks marked ``fatal`` are the local, fast ones ``petray start`` runs
before Ray: a failure among them would otherwise end in a traceback minutes later.
Nothing here prints; ``petray check`` and ``petray start`` render the lines.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import Engine

from petray.errors import ConfigurationError, PetrayError
from petray.settings import Settings, load_settings

ENV_PREFIX = "PETRAY_"
# PETRAY_* names read outside Settings: the password for ``petray user add`` and the reference
# service's test switches, and the marker petray puts on its own Ray processes.
OTHER_ENV_NAMES = frozenset({"PETRAY_PASSWORD", "PETRAY_GATEWAY_RUN"})
OTHER_ENV_PREFIXES = ("PETRAY_REFERENCE_",)
ECHO_TIMEOUT_S = 5.0
# Below this multiple of the floor, free disk is a warning: ingest stops at the floor itself.
DISK_WARN_FACTOR = 2
DASHBOARD_DEFAULT_PORT = 8265


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fatal: bool = False  # also run by ``petray start`` before Ray, which stops on a failure

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.verdict.value.upper():<4} {self.name:<22} {self.detail}"


def _ok(name: str, detail: str, *, fatal: bool = False) -> Check:
    return Check(name, Verdict.OK, detail, fatal)


def _warn(name: str, detail: str, *, fatal: bool = False) -> Check:
    return Check(name, Verdict.WARN, detail, fatal)


def _fail(name: str, detail: str, *, fatal: bool = False) -> Check:
    return Check(name, Verdict.FAIL, detail, fatal)


# --- settings and environment --------------------------------------------------------------


def known_env_names() -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def check_environment(environ: Mapping[str, str]) -> Check:
    """``PETRAY_*`` variables no setting reads: a misspelt one is otherwise silently ignored."""
    known = known_env_names()
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and name not in OTHER_ENV_NAMES
        and not name.startswith(OTHER_ENV_PREFIXES)
    )
    if not unknown:
        return _ok("environment", "every PETRAY_* variable is a known setting", fatal=True)
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return _warn("environment", "unknown, ignored: " + ", ".join(described), fatal=True)


def check_secrets(settings: Settings) -> Check:
    if not settings.production:
        return _ok("secrets", "development mode: secrets not checked", fatal=True)
    from petray.site.production import production_problems

    problems = production_problems(settings)
    if problems:
        return _fail("secrets", "; ".join(problems), fatal=True)
    return _ok("secrets", "production secrets set", fatal=True)


def check_tls_files(settings: Settings) -> list[Check]:
    from petray.dicom.tls import server_context

    checks = []
    for name, cert, key, ca, port in (
        (
            "dicom tls",
            settings.dicom_tls_cert,
            settings.dicom_tls_key,
            settings.dicom_tls_ca,
            settings.dicom_tls_port,
        ),
        ("http tls", settings.http_tls_cert, settings.http_tls_key, None, settings.http_port),
    ):
        if cert is None or key is None:
            checks.append(_ok(name, "off", fatal=True))
            continue
        try:
            server_context(cert, key, ca=ca)
        except ConfigurationError as exc:
            checks.append(_fail(name, str(exc), fatal=True))
            continue
        clients = ", client certificates required" if ca else ""
        checks.append(_ok(name, f"{cert} on port {port}{clients}", fatal=True))
    return checks


# --- network -------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_addresses(settings: Settings, remote_url: str) -> list[Check]:
    """Bind addresses and the callback URL against where the peers are (issue 10)."""
    checks = []
    callback = urlsplit(settings.resolved_callback_url)
    callback_host = callback.hostname or ""
    remote_host = urlsplit(remote_url).hostname or ""
    if _is_loopback(callback_host) and not _is_loopback(remote_host):
        checks.append(
            _warn(
                "callback url",
                f"{settings.resolved_callback_url} names this machine's loopback, but the "
                f"service at {remote_host} cannot reach it: set PETRAY_CALLBACK_URL to an "
                "address the service reaches (and PETRAY_HTTP_HOST to listen there)",
            )
        )
    elif not _is_loopback(callback_host) and _is_loopback(settings.http_host):
        checks.append(
            _warn(
                "callback url",
                f"the service calls back {callback_host}, but HTTP listens on "
                f"{settings.http_host} only: set PETRAY_HTTP_HOST (e.g. 0.0.0.0)",
            )
        )
    elif settings.http_tls and callback.scheme != "https":
        checks.append(
            _warn("callback url", f"{settings.resolved_callback_url} is not https: HTTPS is on")
        )
    else:
        checks.append(_ok("callback url", settings.resolved_callback_url))
    if _is_loopback(settings.dicom_bind):
        checks.append(
            _warn(
                "dicom bind",
                f"{settings.dicom_bind}: only this machine can send studies; set "
                "PETRAY_DICOM_BIND=0.0.0.0 (or this machine's address) for scanners and PACS",
            )
            if settings.production
            else _ok("dicom bind", f"{settings.dicom_bind} (loopback only)")
        )
    else:
        checks.append(_ok("dicom bind", settings.dicom_bind))
    return checks


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (as the gateway will, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_ports(settings: Settings, dicom_port: int) -> list[tuple[str, str, int]]:
    """(what, bind address, port) of every port the gateway listens on."""
    ports = []
    if settings.dicom_plain:
        ports.append(("dicom", settings.dicom_bind, dicom_port))
    if settings.dicom_tls:
        ports.append(("dicom tls", settings.dicom_bind, settings.dicom_tls_port))
    ports.append((settings.http_scheme, settings.http_host, settings.http_port))
    if settings.dashboard and settings.dashboard_port is not None:
        ports.append(("ray dashboard", "127.0.0.1", settings.dashboard_port))
    if settings.metrics_port is not None:
        ports.append(("metrics", "127.0.0.1", settings.metrics_port))
    return ports


def check_ports(
    settings: Settings, dicom_port: int, *, is_free: Callable[[str, int], bool] = port_free
) -> Check:
    taken = [
        f"{what} {host}:{port}"
        for what, host, port in gateway_ports(settings, dicom_port)
        if not is_free(host, port)
    ]
    ports = ", ".join(f"{w} {p}" for w, _, p in gateway_ports(settings, dicom_port))
    if taken:
        return _fail(
            "ports",
            "in use: " + ", ".join(taken) + " (another gateway or program listens there)",
            fatal=True,
        )
    return _ok("ports", f"free: {ports}", fatal=True)


# --- storage -------------------------------------------------------------------------------


def _round_trip(directory: Path) -> str:
    """Write, read back and remove a probe file in ``directory``; "" or the problem."""
    probe = directory / f".petray-check-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"petray")
        if probe.read_bytes() != b"petray":
            return f"{directory}: a file read back differs from what was written"
        probe.unlink()
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"
    return ""


def check_home(settings: Settings) -> Check:
    problem = _round_trip(settings.home)
    if problem:
        return _fail("home", f"PETRAY_HOME not writable: {problem}", fatal=True)
    return _ok("home", str(settings.home), fatal=True)


def check_shared_folder(settings: Settings) -> Check:
    """petray writes to_process/ and reads processed/; the service does the reverse, so both
    must accept a file from this side too (a read-only mount shows up here, not at upload)."""
    shared = settings.resolved_shared_dir
    problems = [p for p in (_round_trip(shared / d) for d in ("to_process", "processed")) if p]
    if problems:
        return _fail("shared folder", "; ".join(problems))
    return _ok("shared folder", f"{shared}: to_process/ and processed/ writable and readable")


def check_disk(settings: Settings) -> Check:
    floor = settings.min_free_disk_mb
    try:
        free_mb = shutil.disk_usage(settings.home).free // 2**20
    except OSError as exc:
        return _fail("free disk", f"{settings.home}: {exc.strerror or exc}")
    detail = f"{free_mb} MiB free in {settings.home} (ingest stops below {floor} MiB)"
    if free_mb < floor:
        return _fail("free disk", detail)
    if free_mb < floor * DISK_WARN_FACTOR:
        return _warn("free disk", detail)
    return _ok("free disk", detail)


def _describe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: say so without echoing what may hold a password
        return "PETRAY_DATABASE_URL (unparseable)"


def check_database(settings: Settings, engine: Engine) -> Check:
    """Reachable, and at the newest schema revision (``petray start`` migrates if not)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from petray.db.engine import MIGRATIONS_DIR

    where = _describe_url(settings.resolved_database_url)  # never the password
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except Exception as exc:  # every driver has its own errors; the message is what helps
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return _fail("database", f"{where} unreachable: {reason}", fatal=True)
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if current == head:
        return _ok("database", f"{where} at revision {head}", fatal=True)
    state = "empty" if current is None else f"at revision {current}"
    return _warn(
        "database",
        f"{where} is {state}, newest is {head}: petray start (or petray migrate) upgrades it",
        fatal=True,
    )


# --- peers ---------------------------------------------------------------------------------


def check_service(remote_url: str, settings: Settings) -> Check:
    from petray.service.remote import RemoteClient

    try:
        with RemoteClient(
            remote_url, settings.remote_token, timeout_s=min(settings.remote_timeout_s, 5.0)
        ) as client:
            rtt = client.ping()
    except PetrayError as exc:
        return _fail("service", f"{remote_url}: {exc}")
    return _ok("service", f"{remote_url} answered /check_ping in {rtt * 1000:.0f} ms")


def check_destinations(destinations: Iterable[object], calling_ae: str) -> list[Check]:
    """C-ECHO every destination device (over TLS where the device says so)."""
    from petray.db.models import Device
    from petray.dicom.scu import DicomNode, echo
    from petray.dicom.tls import device_tls

    checks = []
    for device in destinations:
        assert isinstance(device, Device)
        name = f"echo {device.name}"
        if device.stow_url:
            # DICOMweb has no C-ECHO; a delivery shows whether the service answers.
            checks.append(_ok(f"stow {device.name}", f"STOW-RS destination {device.stow_url}"))
            continue
        try:
            node = DicomNode(device.ae_title, device.host, device.port, tls=device_tls(device))
        except ConfigurationError as exc:
            checks.append(_warn(name, str(exc)))
            continue
        result = echo(node, calling_ae=calling_ae, timeout_s=ECHO_TIMEOUT_S)
        checks.append(_ok(name, result.message) if result.ok else _warn(name, result.message))
    if not checks:
        checks.append(_warn("destinations", "none configured: results cannot be delivered"))
    return checks


# --- the whole run -------------------------------------------------------------------------


def run_checks(
    environ: Mapping[str, str] | None = None, *, fatal_only: bool = False
) -> list[Check]:
    """Every check in order; ``fatal_only``: the subset ``petray start`` runs before Ray."""
    environ = os.environ if environ is None else environ
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        return [_fail("settings", str(exc), fatal=True), check_environment(environ)]
    checks = [
        _ok("settings", "valid", fatal=True),
        check_environment(environ),
        check_secrets(settings),
        *check_tls_files(settings),
        check_home(settings),
    ]
    from petray.db.engine import make_engine, make_sessionmaker, unit_of_work

    engine = make_engine(settings.resolved_database_url)
    try:
        database = check_database(settings, engine)
        checks.append(database)
        migrated = database.verdict == Verdict.OK
        dicom_port, remote_url, calling_ae, destinations = settings.dicom_port, "", "", []
        if migrated:
            from petray.site.siteconfig import (
                effective_listener,
                effective_remote_url,
                list_devices,
            )

            with unit_of_work(make_sessionmaker(engine)) as session:
                listener = effective_listener(settings, session=session)
                dicom_port, calling_ae = listener.port, listener.ae_title
                remote_url = effective_remote_url(settings, session=session)
                destinations = [d for d in list_devices(session=session) if d.is_destination]
                session.expunge_all()
        remote_url = remote_url or settings.remote_url
        checks.append(check_ports(settings, dicom_port))
        if fatal_only:
            return checks
        checks += check_addresses(settings, remote_url)
        checks.append(check_shared_folder(settings))
        checks.append(check_disk(settings))
        checks.append(check_service(remote_url, settings))
        if migrated:
            checks += check_destinations(destinations, calling_ae or settings.ae_title)
        else:
            checks.append(_warn("destinations", "not checked: the database is not migrated"))
    finally:
        engine.dispose()
    return checks


def can_run(checks: Iterable[Check]) -> bool:
    return all(check.verdict != Verdict.FAIL for check in checks)
