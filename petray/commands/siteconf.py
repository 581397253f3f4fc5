"""``petray radiopharm list|add|edit`` and ``petray config show|set`` (issue 11).

The same rules as the console and REST API: the values go through the API's own schemas, and
every change is recorded in the audit trail as the OS user.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.commands.admin import print_rows
from petray.commands.database import admin_database, admin_session, cli_audit
from petray.db.models import Radiopharmaceutical
from petray.errors import ConfigurationError
from petray.settings import Settings
from petray.site.siteconfig import (
    NULLABLE_SETTINGS,
    apply_config_values,
    effective_client_id,
    effective_listener,
    effective_remote_url,
    get_site_config,
)

# Read by the listener only when it (re)starts; the console's Save restarts it at once.
LISTENER_FIELDS = frozenset({"ae_title", "dicom_port"})
# ``petray config set quant_max_activity_change_pct=off``: what turns a nullable setting off.
OFF_WORDS = ("", "off", "none", "null")


def _validated(schema: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "value"
            problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        raise ConfigurationError("; ".join(problems)) from None


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _radiopharm_row(r: Radiopharmaceutical) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "nuclide": r.nuclide,
        "half_life_s": r.half_life_s,
        "synonyms": list(r.synonyms),
        "codes": list(r.codes),
    }


def _by_name(name: str, session: Session) -> Radiopharmaceutical | None:
    return session.scalar(select(Radiopharmaceutical).where(Radiopharmaceutical.name == name))


def run_radiopharm(args: argparse.Namespace) -> int:
    from petray.site.schemas import RadiopharmaceuticalCreate, RadiopharmaceuticalUpdate

    with admin_session(write=args.action != "list") as session:
        if args.action == "list":
            rows = [
                _radiopharm_row(r)
                for r in session.scalars(
                    select(Radiopharmaceutical).order_by(Radiopharmaceutical.name)
                )
            ]
            print_rows(
                rows,
                as_json=args.json,
                empty="no radiopharmaceuticals (every task fails validation until one is added)",
                line="{name:<20} {nuclide:<8} {half_life_s:>9g} s  {synonyms_text}",
                shown=lambda r: {**r, "synonyms_text": ", ".join(r["synonyms"])},
            )
            return 0
        fields = {
            "name": args.new_name if args.action == "edit" else args.name,
            "nuclide": args.nuclide,
            "half_life_s": args.half_life,
            "synonyms": _split(args.synonyms),
            "codes": _split(args.codes),
        }
        given = {k: v for k, v in fields.items() if v is not None}
        if args.action == "add":
            body = _validated(RadiopharmaceuticalCreate, given)
            if _by_name(str(given["name"]), session) is not None:
                raise ConfigurationError(f"a radiopharmaceutical named {args.name!r} exists")
            row = Radiopharmaceutical(**body.model_dump())
            session.add(row)
            session.flush()
            cli_audit(
                "radiopharmaceutical.create",
                f"Radiopharmaceutical {row.name}",
                session=session,
                id=row.id,
                values=body.model_dump(),
            )
            print(f"added radiopharmaceutical {row.name} ({row.nuclide})")
            return 0
        found = _by_name(args.name, session)
        if found is None:
            raise ConfigurationError(f"no radiopharmaceutical named {args.name!r}")
        if not given:
            raise ConfigurationError("nothing to change: give at least one option")
        update = _validated(RadiopharmaceuticalUpdate, given)
        new_name = given.get("name")
        if new_name and new_name != found.name and _by_name(str(new_name), session) is not None:
            raise ConfigurationError(f"a radiopharmaceutical named {new_name!r} exists")
        changed = update.model_dump(exclude_none=True)
        for key, value in changed.items():
            setattr(found, key, value)
        session.flush()
        cli_audit(
            "radiopharmaceutical.update",
            f"Radiopharmaceutical {found.name}",
            session=session,
            id=found.id,
            changed=changed,
        )
        print(f"saved radiopharmaceutical {found.name}: {', '.join(sorted(changed))}")
    return 0


def config_values(settings: Settings, *, session: Session) -> dict[str, Any]:
    """The site configuration as the console shows it (overrides applied)."""
    config = get_site_config(session=session)
    listener = effective_listener(settings, session=session)
    return {
        "client_id": effective_client_id(settings, session=session),
        "ae_title": listener.ae_title,
        "dicom_port": listener.port,
        "remote_url": effective_remote_url(settings, session=session),
        "min_images": config.min_images,
        "slice_gap_tolerance": config.slice_gap_tolerance,
        "inactivity_wait_s": config.inactivity_wait_s,
        "abort_timeout_s": config.abort_timeout_s,
        "reply_to_sender": config.reply_to_sender,
        "restrict_sources": config.restrict_sources,
        "retention_done_days": config.retention_done_days,
        "retention_failed_days": config.retention_failed_days,
        # Issue 15: null is "off" for the quantitative check's limits (percent).
        "require_patient_weight": config.require_patient_weight,
        "quant_max_activity_change_pct": config.quant_max_activity_change_pct,
        "quant_max_suvmax_change_pct": config.quant_max_suvmax_change_pct,
    }


def _pairs(items: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"expected KEY=VALUE, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def run_config(args: argparse.Namespace) -> int:
    from petray.site.schemas import ConfigUpdate

    if args.action == "show":
        with admin_database(write=False) as (settings, session):
            values = config_values(settings, session=session)
        if args.json:
            print(json.dumps(values, indent=2))
        else:
            for key, value in values.items():
                print(f"{key:<22} {value}")
        return 0
    wanted = _pairs(args.pairs)
    unknown = sorted(set(wanted) - set(ConfigUpdate.model_fields))
    if unknown:
        known = ", ".join(ConfigUpdate.model_fields)
        raise ConfigurationError(f"unknown setting {', '.join(unknown)}; known: {known}")
    given: dict[str, Any] = dict(wanted)
    for name in NULLABLE_SETTINGS & set(given):
        if str(given[name]).lower() in OFF_WORDS:
            given[name] = None  # e.g. quant_max_activity_change_pct=off
    update = _validated(ConfigUpdate, given)
    with admin_database(write=True) as (settings, session):
        # What the site used before, overrides applied (an unset client id is the setting's).
        shown_before = config_values(settings, session=session)
        changed = apply_config_values(update.model_dump(exclude_unset=True), session=session)
        if changed:
            cli_audit("config.update", "site configuration", session=session, changed=changed)
    if not changed:
        print("nothing changed")
        return 0
    for name, change in changed.items():
        print(f"{name}: {shown_before.get(name, change['from'])} -> {change['to']}")
    if set(changed) & LISTENER_FIELDS:
        print("the DICOM listener uses the new AE title/port when the gateway restarts")
    return 0
