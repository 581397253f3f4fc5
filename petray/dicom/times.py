"""Dates and times of a PET header: acquisition start and injection time (PS3.3 C.8.9).

Shared by the processing header (what the service gets) and the SUV scale (issue 15), so both
read the decay reference the same way.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from pydicom import Dataset
from pydicom.valuerep import DA, DT, TM


def text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _naive(moment: datetime) -> datetime:
    # DA/TM values are local wall-clock time without an offset; a DT with an offset is compared on
    # the same wall-clock basis so the two kinds can be mixed.
    return moment.replace(tzinfo=None)


def parse_dt(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return _naive(DT(value))
    except ValueError:
        return None


def parse_date(value: str) -> date | None:
    if not value:
        return None
    try:
        return DA(value)
    except ValueError:
        return None


def combine(date_text: str, time_text: str) -> datetime | None:
    day = parse_date(date_text)
    if day is None or not time_text:
        return None
    try:
        moment = TM(time_text)
    except ValueError:
        return None
    return datetime.combine(day, moment.replace(tzinfo=None))


def acquisition_start(ds: Dataset) -> datetime | None:
    # PS3.3 C.8.9.4.1.2 and the SUV convention use SeriesDate/SeriesTime as the decay reference.
    return (
        combine(text(ds, "SeriesDate"), text(ds, "SeriesTime"))
        or parse_dt(text(ds, "AcquisitionDateTime"))
        or combine(text(ds, "AcquisitionDate"), text(ds, "AcquisitionTime"))
    )


def injection_start(item: Dataset, ds: Dataset, acquisition: datetime | None) -> datetime | None:
    """When the radiopharmaceutical was given, from a RadiopharmaceuticalInformation item."""
    moment = parse_dt(text(item, "RadiopharmaceuticalStartDateTime"))
    if moment is not None:
        return moment
    date_text = text(ds, "SeriesDate") or text(ds, "AcquisitionDate") or text(ds, "StudyDate")
    moment = combine(date_text, text(item, "RadiopharmaceuticalStartTime"))
    if moment is not None and acquisition is not None and moment > acquisition:
        # Only a time was given: an injection before midnight for a scan after it.
        moment -= timedelta(days=1)
    return moment
