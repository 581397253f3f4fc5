"""Run-time site configuration (one database row) and the devices table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import Device, PostFilter, SiteConfig
from petray.dicom.hostnames import validate_host
from petray.dicom.stow_device import validate_basic, validate_stow_url, validate_token
from petray.dicom.vr import ae_title
from petray.errors import ConfigurationError
from petray.imaging.filters import FilterSpec
from petray.settings import Settings

SITE_CONFIG_ID = 1


def get_site_config(*, session: Session) -> SiteConfig:
    """The configuration row, created with defaults the first time."""
    config = session.get(SiteConfig, SITE_CONFIG_ID)
    if config is None:
        config = SiteConfig(
            id=SITE_CONFIG_ID,
            min_images=10,
            slice_gap_tolerance=1.5,
            inactivity_wait_s=5.0,
            abort_timeout_s=600.0,
            reply_to_sender=False,
            restrict_sources=False,
        )
        session.add(config)
        session.flush()
    return config


@dataclass(frozen=True)
class Listener:
    ae_title: str
    port: int
    bind: str


def effective_listener(settings: Settings, *, session: Session) -> Listener:
    config = get_site_config(session=session)
    return Listener(
        ae_title=config.ae_title or settings.ae_title,
        port=config.dicom_port or settings.dicom_port,
        bind=settings.dicom_bind,
    )


def effective_remote_url(settings: Settings, *, session: Session) -> str:
    return get_site_config(session=session).remote_url or settings.remote_url


def effective_client_id(settings: Settings, *, session: Session) -> str:
    """The site id the service licenses: the console's value, else PETRAY_CLIENT_ID."""
    return get_site_config(session=session).client_id or settings.client_id


def validate_ae_title(value: str) -> str:
    try:
        return ae_title(value)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _new_device_name(name: str, *, session: Session) -> str:
    # The name is stored stripped, so the duplicate check must compare the stripped name too.
    name = name.strip()
    if not name:
        raise ConfigurationError("device name must not be empty")
    if session.scalar(select(Device).where(Device.name == name)) is not None:
        raise ConfigurationError(f"a device named {name!r} already exists")
    return name


def _check_client_certificate(device: Device) -> None:
    if bool(device.tls_cert) != bool(device.tls_key):
        raise ConfigurationError("a TLS client certificate needs its key, and a key its cert")


def add_device(
    *,
    session: Session,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    is_source: bool,
    is_destination: bool,
    tls: bool = False,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    match_ae_only: bool = False,
) -> Device:
    name = _new_device_name(name, session=session)
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"port {port} out of range 1-65535")
    try:
        host = validate_host(host)
    except ValueError as exc:
        raise ConfigurationError(f"host {exc}") from None
    if not (is_source or is_destination):
        raise ConfigurationError("a device must be a source, a destination or both")
    device = Device(
        name=name,
        ae_title=validate_ae_title(ae_title),
        host=host.strip(),
        port=port,
        is_source=is_source,
        is_destination=is_destination,
        # TLS files are paths on the gateway, checked when used (petray.dicom.tls names a bad one).
        tls=tls,
        tls_ca=tls_ca.strip(),
        tls_cert=tls_cert.strip(),
        tls_key=tls_key.strip(),
        match_ae_only=match_ae_only,
    )
    _check_client_certificate(device)
    session.add(device)
    session.flush()
    return device


# A STOW-RS device has no AE title: its URL stands in the address columns (host, port 0), so that
# everything keyed on (AE title, host, port) - a task's destination rows and their unique
# constraint, health, TLS lookup - tells two DICOMweb services apart, even on one server.
STOW_PORT = 0


def set_stow(device: Device, *, url: str, token: str = "", basic: str = "") -> None:
    """Make ``device`` a STOW-RS destination at ``url`` (validated); ConfigurationError if not."""
    try:
        url, token, basic = validate_stow_url(url), validate_token(token), validate_basic(basic)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if token and basic:
        raise ConfigurationError("give a token or user:password, not both")
    if device.is_source:
        raise ConfigurationError("a STOW-RS device is a destination only: it cannot send to petray")
    device.ae_title, device.host, device.port = "", url, STOW_PORT
    device.stow_url, device.stow_token, device.stow_basic = url, token, basic
    # The TLS badge and with_device_tls follow the scheme; the CA/cert files stay the device's.
    device.tls = url.startswith("https://")
    device.is_destination = True


def add_stow_device(
    *,
    session: Session,
    name: str,
    url: str,
    token: str = "",
    basic: str = "",
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
) -> Device:
    """A DICOMweb destination (issue 15): results are stored with STOW-RS at ``url``."""
    device = Device(
        name=_new_device_name(name, session=session),
        is_source=False,
        is_destination=True,
        tls_ca=tls_ca.strip(),
        tls_cert=tls_cert.strip(),
        tls_key=tls_key.strip(),
        match_ae_only=False,
    )
    _check_client_certificate(device)
    set_stow(device, url=url, token=token, basic=basic)
    session.add(device)
    session.flush()
    return device


def add_filter(
    spec: FilterSpec,
    *,
    session: Session,
    scanner_model: str = "all",
    radiopharmaceutical: str = "all",
    enabled: bool = True,
) -> PostFilter:
    """Store a post-filter (already validated by FilterSpec) for the Unpacker to apply."""
    check_series_number_free(spec.series_number, session=session)
    row = PostFilter(
        description=spec.description,
        series_number=spec.series_number,
        fwhm_mm=spec.fwhm_mm,
        noise_pct=spec.noise_pct,
        mode=spec.mode,
        scanner_model=scanner_model.strip() or "all",
        radiopharmaceutical=radiopharmaceutical.strip() or "all",
        enabled=enabled,
    )
    session.add(row)
    session.flush()
    return row


def check_series_number_free(
    series_number: int, *, session: Session, other_than: int | None = None
) -> None:
    """Two filters with one series number would send two output series numbered alike."""
    found = session.scalar(
        select(PostFilter).where(PostFilter.series_number == series_number).limit(1)
    )
    if found is not None and found.id != other_than:
        raise ConfigurationError(
            f"series number {series_number} is already used by filter {found.description!r}"
        )


def list_devices(*, session: Session) -> list[Device]:
    return list(session.scalars(select(Device).order_by(Device.name)))


def remove_device(name: str, *, session: Session) -> None:
    device = session.scalar(select(Device).where(Device.name == name))
    if device is None:
        raise ConfigurationError(f"no device named {name!r}")
    session.delete(device)


def destinations(*, session: Session) -> list[Device]:
    return list(
        session.scalars(select(Device).where(Device.is_destination.is_(True)).order_by(Device.name))
    )


# Issue 9: the whitelist fails closed; the Store SCP, the console and the dashboard all say so.
NO_SOURCE_DEVICE = "only configured sources may store, and no source device is configured"


def everyone_refused(*, session: Session) -> str:
    """Why every sender is refused, for the console to show; "" when some sender may store."""
    if not get_site_config(session=session).restrict_sources:
        return ""
    if any(d.is_source for d in list_devices(session=session)):
        return ""
    return (
        f"Every sender is refused: {NO_SOURCE_DEVICE}. Add a source device, or turn off "
        '"only accept configured sources".'
    )


def calling_ae_whitelist(*, session: Session) -> list[str]:
    """AE titles that may store to us: the source devices, or [] (anyone) when unrestricted."""
    if not get_site_config(session=session).restrict_sources:
        return []
    return [d.ae_title for d in list_devices(session=session) if d.is_source]


def add_destination_and_filters(
    *,
    session: Session,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    filters: Sequence[FilterSpec],
) -> None:
    """A site in one step: one DICOM destination and the post-filters (demo, benchmarks, tests)."""
    add_device(
        session=session,
        name=name,
        ae_title=ae_title,
        host=host,
        port=port,
        is_source=False,
        is_destination=True,
    )
    for spec in filters:
        add_filter(spec, session=session)


# Site settings where null is a value, "off" (issue 15: the quantitative check's limits), so an
# update may set them to null; for every other setting a null means "not given".
NULLABLE_SETTINGS = frozenset({"quant_max_activity_change_pct", "quant_max_suvmax_change_pct"})


def apply_config_values(values: Mapping[str, Any], *, session: Session) -> dict[str, Any]:
    """Write the given settings to the configuration row; returns the changed ones, old and new."""
    config = get_site_config(session=session)
    changed: dict[str, Any] = {}
    for name, value in values.items():
        if value is None and name not in NULLABLE_SETTINGS:
            continue
        old = getattr(config, name)
        if old != value:
            setattr(config, name, value)
            changed[name] = {"from": old, "to": value}
    return changed
