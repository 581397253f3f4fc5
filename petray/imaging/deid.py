"""De-identification helpers: per-task date shifts and the identifying values of a header (issue 3).

Nothing that leaves the site may carry these values; the upload test scans every byte of the
archive for each string ``identifying_values`` returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydicom import Dataset
from pydicom.valuerep import DA, PersonName

# A shift of one to ten years into the past: large enough that no shifted date equals a real one
# of the same study, small enough that ages and seasons stay plausible for the service.
MIN_SHIFT_DAYS = 365
MAX_SHIFT_DAYS = 3650

# PS3.15 Annex E (Basic Application Level Confidentiality Profile), the elements the packer could
# plausibly leak: identity of patient, staff, institution and the original UIDs.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "IrradiationEventUID",
)
# Dates that are sent only after shifting: the original forms must never appear.
SHIFTED_DATE_KEYWORDS: tuple[str, ...] = (
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
)
# A value this short (StudyID "0", a name part "Li") matches by chance in any archive, so a scan
# for it proves nothing; it also identifies no one on its own.
MIN_VALUE_LENGTH = 3


def choose_date_shift_days(task_id: str) -> int:
    """A negative number of days, fixed for a task (a retry shifts the same way), in
    ``-MAX_SHIFT_DAYS .. -MIN_SHIFT_DAYS``."""
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    span = MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1
    return -(MIN_SHIFT_DAYS + int.from_bytes(digest[:8], "big") % span)


def _date_forms(text: str) -> set[str]:
    try:
        day = DA(text)
    except ValueError:
        return set()
    if day is None:
        return set()
    return {
        day.strftime("%Y%m%d"),
        day.strftime("%Y-%m-%d"),
        day.strftime("%Y/%m/%d"),
        day.strftime("%d/%m/%Y"),
        day.strftime("%m/%d/%Y"),
        day.strftime("%d.%m.%Y"),
        day.strftime("%d-%m-%Y"),
    }


def _name_forms(name: PersonName) -> set[str]:
    forms = {str(name)}
    for part in (name.family_name, name.given_name, name.middle_name):
        if part:
            forms.add(part)
    if name.given_name and name.family_name:
        forms.add(f"{name.given_name} {name.family_name}")
        forms.add(f"{name.family_name} {name.given_name}")
    return forms


def _values(value: object) -> Iterable[object]:
    if isinstance(value, str | bytes | PersonName) or not isinstance(value, Iterable):
        return (value,)
    return value


def identifying_values(ds: Dataset) -> set[str]:
    """The non-empty strings that identify the patient or the original study in ``ds``."""
    found: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        for single in _values(value):
            if isinstance(single, PersonName):
                found |= _name_forms(single)
            elif single is not None:
                found.add(str(single))
    for keyword in SHIFTED_DATE_KEYWORDS:
        found |= _date_forms(str(ds.get(keyword) or ""))
    stripped = (text.strip() for text in found)
    return {text for text in stripped if len(text) >= MIN_VALUE_LENGTH}
