"""How the console shows things to people (issue 11): names, dates, times and failure reasons.

Pure functions of stored values: the database keeps DICOM values and UTC times as received; only
what a technologist reads is turned into their words, in the site's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

PN_COMPONENTS = 5  # PS3.5 6.2.1.1: family^given^middle^prefix^suffix


def site_zone(name: str | None) -> tzinfo:
    """The zone of ``PETRAY_TIMEZONE``, else the host's local zone."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    assert local is not None  # astimezone() always sets one
    return local


def local_time(value: datetime | None, zone: tzinfo, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    """A UTC time as the site reads it; "—" when there is none."""
    if value is None:
        return "—"
    return value.astimezone(zone).strftime(fmt).strip()


def zone_abbreviation(zone: tzinfo, at: datetime | None = None) -> str:
    return (at or datetime.now(zone)).astimezone(zone).strftime("%Z")


def person_name(value: str | None) -> str:
    """A DICOM PN as people write it: ``Doe^Jane^M^Dr`` reads "Doe, Jane M, Dr".

    Only the first component group (alphabetic) is shown; ideographic and phonetic groups
    after ``=`` are alternatives of the same name.
    """
    if not value:
        return ""
    alphabetic = value.split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")[:PN_COMPONENTS]]
    parts += [""] * (PN_COMPONENTS - len(parts))
    family, given, middle, prefix, suffix = parts
    first = " ".join(p for p in (prefix, given, middle) if p)
    shown = ", ".join(p for p in (family, first) if p)
    return f"{shown}, {suffix}" if suffix and shown else shown or suffix


def dicom_date(value: str | None) -> str:
    """A DICOM DA (``20261202``) as ``2026-12-02``; anything else as it came."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


@dataclass(frozen=True)
class Explained:
    """A failure reason as a technologist reads it: what happened, and what to do."""

    what: str
    todo: str = ""


_TRACER = re.compile(r"unknown radiopharmaceutical '([^']*)'")
# Stored reasons (validation, delivery, service) mapped to words for the people at the console;
# the stored reason stays as it is (the API, logs and audit keep the technical text).
_ADVICE: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"no DICOM destination is configured"),
        "No destination is set up to receive the results.",
        "Add a destination under Devices, then retry the task.",
    ),
    (
        re.compile(r"licen[cs]e", re.IGNORECASE),
        "The processing service refused this series under the site's licence.",
        "Check the licence with the service provider; retry once it is fixed.",
    ),
    (
        re.compile(r"(DYNAMIC|GATED) PET series are not supported"),
        "Dynamic and gated series cannot be processed, only static ones.",
        "Send the static (whole-body) series instead.",
    ),
)


def explain(reason: str) -> Explained:
    """``reason`` worded for a technologist, with what to do when petray knows it."""
    if not reason:
        return Explained("")
    tracer = _TRACER.search(reason)
    if tracer:
        others = [
            p
            for p in reason.removeprefix("header incomplete: ").split("; ")
            if not _TRACER.search(p)
        ]
        what = f"The tracer '{tracer.group(1)}' is not in the radiopharmaceutical table."
        if others:
            what += " The header also lacks: " + "; ".join(others) + "."
        return Explained(
            what,
            "Add it (or add its name as a synonym of a known tracer) under "
            "Radiopharmaceuticals, then retry the task.",
        )
    for pattern, what, todo in _ADVICE:
        if pattern.search(reason):
            return Explained(what, todo)
    if reason.startswith("header incomplete: "):
        return Explained(
            "The scanner left out information the service needs: "
            + reason.removeprefix("header incomplete: ")
            + ".",
            "Correct the series at the scanner or PACS and send it again.",
        )
    return Explained(reason)
