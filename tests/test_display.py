"""What the console shows people (issue 11): names, dates, times, reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from petray.site.display import dicom_date, explain, local_time, person_name, site_zone


@pytest.mark.parametrize(
    ("pn", "shown"),
    [
        ("Doe^Jane", "Doe, Jane"),
        ("Doe^Jane^M^Dr", "Doe, Dr Jane M"),
        ("Doe^Jane^^^Jr", "Doe, Jane, Jr"),
        ("Doe", "Doe"),
        ("^Jane", "Jane"),
        ("Yamada^Tarou=山田^太郎", "Yamada, Tarou"),
        ("", ""),
    ],
)
def test_person_names_read_as_people_write_them(pn: str, shown: str) -> None:
    assert person_name(pn) == shown


def test_dates_and_times_in_the_site_zone() -> None:
    assert dicom_date("20261202") == "2026-12-02"
    assert dicom_date("2026") == "2026"
    at = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert local_time(at, ZoneInfo("Europe/Madrid")) == "2026-07-01 14:00:00 CEST"
    assert local_time(at, site_zone("America/New_York"), "%H:%M %Z") == "08:00 EDT"
    assert local_time(None, ZoneInfo("UTC")) == "—"
    assert site_zone(None).utcoffset(datetime.now()) is not None


def test_an_unknown_tracer_is_worded_for_a_technologist() -> None:
    told = explain("header incomplete: unknown radiopharmaceutical 'FLT'")
    assert "tracer 'FLT' is not in the radiopharmaceutical table" in told.what
    assert "header" not in told.what
    assert "Radiopharmaceuticals" in told.todo and "retry" in told.todo
    both = explain(
        "header incomplete: patient weight (PatientWeight) missing; "
        "unknown radiopharmaceutical 'FLT'"
    )
    assert "also lacks: patient weight (PatientWeight) missing" in both.what


def test_other_reasons() -> None:
    assert "Devices" in explain("no DICOM destination is configured").todo
    told = explain("header incomplete: patient weight (PatientWeight) missing")
    assert told.what.startswith("The scanner left out")
    assert explain("disk full").what == "disk full" and explain("disk full").todo == ""
