"""``petray device``, ``petray filter`` and ``petray tasks``: site administration from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from petray.commands.database import admin_database, admin_session, cli_audit
from petray.db.models import Device, PostFilter
from petray.dicom.stow_device import auth_label
from petray.errors import ConfigurationError
from petray.imaging.filters import FilterSpec
from petray.site.siteconfig import (
    add_device,
    add_filter,
    add_stow_device,
    effective_listener,
    list_devices,
    remove_device,
)
from petray.tasks import list_tasks

__all__ = ["admin_session", "cli_audit", "run_device", "run_filter", "run_tasks"]
ECHO_TIMEOUT_S = 10.0


Row = dict[str, Any]


def print_rows(
    rows: list[Row],
    *,
    as_json: bool,
    empty: str,
    line: str,
    shown: Callable[[Row], Row] = lambda row: row,
) -> None:
    """A listing: JSON (``[]`` when empty), or ``line`` per row (``shown`` adds display fields),
    or the ``empty`` sentence, so an empty list never looks like a command that did nothing."""
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(empty)
    else:
        for row in rows:
            print(line.format(**shown(row)).rstrip())


def run_device(args: argparse.Namespace) -> int:
    if args.action == "echo":
        return _echo(args.name)
    if args.action == "add":
        _check_add_arguments(args)
    with admin_session(write=args.action != "list") as session:
        if args.action == "add" and args.stow_url is not None:
            device = add_stow_device(
                session=session,
                name=args.name,
                url=args.stow_url,
                token=args.token or "",
                basic=args.basic or "",
                tls_ca=args.tls_ca,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
            )
            cli_audit("device.create", f"Device {device.name}", session=session, id=device.id)
            print(f"added device {device.name}: STOW-RS {device.stow_url} ({stow_auth(device)})")
        elif args.action == "add":
            device = add_device(
                session=session,
                name=args.name,
                ae_title=args.ae_title,
                host=args.host,
                port=args.port,
                is_source=args.source,
                is_destination=args.destination,
                tls=args.tls,
                tls_ca=args.tls_ca,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                match_ae_only=args.match_ae_only,
            )
            tls = " over TLS" if device.tls else ""
            cli_audit("device.create", f"Device {device.name}", session=session, id=device.id)
            print(f"added device {device.name}: {device.ae_title}@{device.host}:{device.port}{tls}")
        elif args.action == "remove":
            remove_device(args.name, session=session)
            cli_audit("device.delete", f"Device {args.name}", session=session)
            print(f"removed device {args.name}")
        else:
            rows = [
                {
                    "name": d.name,
                    "ae_title": d.ae_title,
                    "host": d.host,
                    "port": d.port,
                    "source": d.is_source,
                    "destination": d.is_destination,
                    "tls": d.tls,
                    "match_ae_only": d.match_ae_only,
                    "stow_url": d.stow_url,
                    # Never the token or password: only which kind of credentials is set.
                    "stow_auth": stow_auth(d) if d.stow_url else "",
                }
                for d in list_devices(session=session)
            ]
            print_rows(
                rows,
                as_json=args.json,
                empty="no devices",
                line="{name:<20} {ae_title:<16} {address}  {roles}",
                shown=lambda r: {
                    **r,
                    "ae_title": r["ae_title"] or "STOW-RS",
                    "address": (
                        f"{r['stow_url']} ({r['stow_auth']})"
                        if r["stow_url"]
                        else f"{r['host']}:{r['port']}"
                    ),
                    "roles": ",".join(k for k in ("source", "destination") if r[k]),
                },
            )
    return 0


def stow_auth(device: Device) -> str:
    return auth_label(device.stow_token, device.stow_basic)


def _secret(value: str | None, what: str) -> str | None:
    """``-`` reads the secret from standard input: a command line is seen by every user."""
    if value != "-":
        return value
    line = sys.stdin.readline().strip()
    if not line:
        raise ConfigurationError(f"no {what} on standard input")
    return line


def _check_add_arguments(args: argparse.Namespace) -> None:
    """A DICOM device (AE title, host, port) or a STOW-RS one (URL), never a mix of the two."""
    dimse = {"--ae-title": args.ae_title, "--host": args.host, "--port": args.port}
    if args.stow_url is not None:
        given = [flag for flag, value in dimse.items() if value is not None]
        if given:
            raise ConfigurationError(
                f"--stow-url replaces {', '.join(given)}: a STOW-RS device has no AE title, host "
                "or port of its own"
            )
        if args.source or args.match_ae_only:
            raise ConfigurationError("a STOW-RS device is a destination only (no --source)")
        if args.tls:
            raise ConfigurationError("--tls is DICOM TLS; a STOW-RS device uses TLS with https://")
        args.token = _secret(args.token, "token")
        args.basic = _secret(args.basic, "user:password")
        return
    missing = [flag for flag, value in dimse.items() if value is None]
    if missing:
        raise ConfigurationError(
            f"a DICOM device needs {', '.join(missing)} (or give --stow-url for DICOMweb)"
        )
    if args.token is not None or args.basic is not None:
        raise ConfigurationError("--token and --basic are for a STOW-RS device (--stow-url)")


def _echo(name: str) -> int:
    """C-ECHO a device as the gateway would (its AE title, the device's TLS); exit 1 on failure."""
    from petray.dicom.scu import DicomNode, echo
    from petray.dicom.tls import device_tls

    with admin_database(write=True) as (settings, session):
        device = next((d for d in list_devices(session=session) if d.name == name), None)
        if device is None:
            raise ConfigurationError(f"no device named {name!r}")
        if device.stow_url:
            raise ConfigurationError(f"{name} is a STOW-RS destination: C-ECHO is DICOM only")
        node = DicomNode(device.ae_title, device.host, device.port, tls=device_tls(device))
        calling_ae = effective_listener(settings, session=session).ae_title
        device_id = device.id
    result = echo(node, calling_ae=calling_ae, timeout_s=ECHO_TIMEOUT_S)
    # Recorded after the association, in its own unit of work, like the console's C-ECHO.
    with admin_session(write=True) as session:
        cli_audit(
            "device.echo",
            f"{node.ae_title}@{node.host}:{node.port}",
            session=session,
            id=device_id,
            calling_ae=calling_ae,
            outcome="ok" if result.ok else "failed",
            message=result.message,
        )
    print(("echo ok: " if result.ok else "echo failed: ") + result.message)
    return 0 if result.ok else 1


def run_filter(args: argparse.Namespace) -> int:
    with admin_session(write=args.action != "list") as session:
        if args.action == "add":
            try:
                spec = FilterSpec(
                    id=None,
                    description=args.description,
                    series_number=args.series_number,
                    fwhm_mm=args.fwhm,
                    noise_pct=args.noise,
                    mode=args.mode,
                )
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
            row = add_filter(
                spec,
                session=session,
                scanner_model=args.scanner_model,
                radiopharmaceutical=args.radiopharmaceutical,
                enabled=not args.disabled,
            )
            cli_audit("filter.create", f"Filter {row.description!r}", session=session, id=row.id)
            print(f"added filter {row.id}: {row.description} (FWHM {row.fwhm_mm:g} mm)")
        elif args.action == "remove":
            found = session.get(PostFilter, args.id)
            if found is None:
                raise ConfigurationError(f"no filter with id {args.id}")
            session.delete(found)
            label = f"Filter {found.description!r}"
            cli_audit("filter.delete", label, session=session, id=args.id)
            print(f"removed filter {args.id}")
        else:
            rows = [
                {
                    "id": f.id,
                    "description": f.description,
                    "series_number": f.series_number,
                    "fwhm_mm": f.fwhm_mm,
                    "noise_pct": f.noise_pct,
                    "mode": f.mode,
                    "scanner_model": f.scanner_model,
                    "radiopharmaceutical": f.radiopharmaceutical,
                    "enabled": f.enabled,
                }
                for f in session.scalars(select(PostFilter).order_by(PostFilter.id))
            ]
            print_rows(
                rows,
                as_json=args.json,
                empty="no filters (one series of the denoised volume is sent)",
                line="{id:>4} {description:<24} #{series_number:<6} FWHM {fwhm_mm:g} mm "
                "noise {noise_pct:g}% {mode}{off}",
                shown=lambda r: {**r, "off": "" if r["enabled"] else " (disabled)"},
            )
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    with admin_session(write=False) as session:
        tasks = list_tasks(session=session, limit=args.limit)
        if args.json:
            print(json.dumps([t.as_dict() for t in tasks], indent=2))
            return 0
        if not tasks:
            print("no tasks")
        for t in tasks:
            expected = t.expected_images if t.expected_images is not None else "?"
            line = f"{t.id}  {t.stage:<11} {t.state:<9} {t.images}/{expected} images"
            for d in t.destinations:
                line += f"  {d['name']} {d['state']} {d['sent']}/{d['total']}"
            if t.reason:
                line += f"  {t.reason}"
            if t.state == "waiting" and t.next_attempt_at:
                line += f"  (next attempt {t.next_attempt_at})"
            print(line)
    return 0
