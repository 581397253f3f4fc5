"""``petray device``, ``petray filter`` and ``petray tasks``: site administration from a shell."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from petray import audit
from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.db.models import PostFilter
from petray.errors import ConfigurationError
from petray.filters import FilterSpec
from petray.settings import load_settings
from petray.siteconfig import add_device, add_filter, list_devices, remove_device
from petray.tasks import list_tasks


@contextmanager
def admin_session() -> Iterator[Session]:
    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    audit.configure_syslog(settings.audit_syslog)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with unit_of_work(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


def cli_audit(action: str, target: str, *, session: Session, **detail: object) -> None:
    """A change made from a shell: the operating-system user is the actor."""
    audit.record(
        action,
        session=session,
        actor=getpass.getuser(),
        source="cli",
        target=target,
        detail={"via": "cli", **detail},
    )


def run_device(args: argparse.Namespace) -> int:
    with admin_session() as session:
        if args.action == "add":
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
                }
                for d in list_devices(session=session)
            ]
            if getattr(args, "json", False):
                print(json.dumps(rows, indent=2))
            for row in [] if getattr(args, "json", False) else rows:
                roles = ",".join(r for r in ("source", "destination") if row[r])
                print(
                    f"{row['name']:<20} {row['ae_title']:<16} {row['host']}:{row['port']}  {roles}"
                )
    return 0


def run_filter(args: argparse.Namespace) -> int:
    with admin_session() as session:
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
            if getattr(args, "json", False):
                print(json.dumps(rows, indent=2))
            else:
                for r in rows:
                    print(
                        f"{r['id']:>4} {r['description']:<24} #{r['series_number']:<6} "
                        f"FWHM {r['fwhm_mm']:g} mm noise {r['noise_pct']:g}% {r['mode']}"
                        f"{'' if r['enabled'] else ' (disabled)'}"
                    )
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    with admin_session() as session:
        tasks = list_tasks(session=session, limit=args.limit)
        if args.json:
            print(json.dumps([t.as_dict() for t in tasks], indent=2))
            return 0
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
