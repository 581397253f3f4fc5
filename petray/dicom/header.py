"""What petray reads from each received instance's header, checked once on the Store SCP hot path.

Nothing here touches pixel data: the SCP parses only the elements before it
(``petray.dicom.scp.read_header``).
Every missing or invalid attribute is named in one InvalidInstance so the sender's operator can
fix them all at once; values are never echoed back, since they may be patient data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import PositronEmissionTomographyImageStorage

from petray.dicom.geometry import orientation_problem, slice_normal
from petray.dicom.uids import validate_uid
from petray.dicom.values import finite_float
from petray.errors import InvalidInstance

logger = logging.getLogger(__name__)

T = TypeVar("T")

PET_MODALITY = "PT"
ACCEPTED_SOP_CLASSES = frozenset({PositronEmissionTomographyImageStorage})
# Attributes the later stages cannot do without (issue 2: UIDs, geometry, rescale).
MANDATORY_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "BitsAllocated",
)
UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Rows/Columns above this are refused unless the caller passes its own bound (a setting).
DEFAULT_MAX_DIMENSION = 4096
# PS3.3 C.8.9.4.1: PET stores 16- or 32-bit samples; 8 is tolerated (secondary tools).
BITS_ALLOCATED = frozenset({8, 16, 32})
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# Text VRs read straight from their raw bytes when those are plain ASCII (every character set
# encodes ASCII alike, PS3.5 6.1): pydicom's general conversion of ~25 elements was a tenth of
# the Store SCP's time per instance. Anything else (escape sequences, non-ASCII bytes, binary
# VRs, text values with several components) goes through pydicom as before.
_FAST_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "LO", "PN", "SH", "TM", "UI"})
_FAST_NUMBER_VRS = frozenset({"DS", "IS"})
_ESCAPE = b"\x1b"
_VALUE_SEPARATOR = "\\"
_SLOW = object()


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    accession_number: str
    study_description: str
    series_description: str
    series_number: int | None
    manufacturer: str
    model_name: str
    instance_number: int | None
    # Projection of ImagePositionPatient on the slice normal (row x column direction cosines):
    # the coordinate that orders slices whatever the scanner's InstanceNumber convention.
    slice_position: float
    slice_thickness: float | None
    # Images the whole series should hold: NumberOfSlices times the time slices (DYNAMIC) and
    # time slots (GATED), since NumberOfSlices counts one frame only (PS3.3 C.8.9.1).
    number_of_slices: int | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    image_orientation: tuple[float, float, float, float, float, float] = AXIAL
    image_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    bits_allocated: int = 16
    number_of_frames: int = 1
    # For the Validator's decay check (petray.imaging.decay): None when absent or not a number.
    decay_factor: float | None = None
    frame_reference_time: float | None = None

    @property
    def pixel_data_bytes(self) -> int:
        """Bytes of native (uncompressed) PixelData the header implies (PS3.5 8.1.1, one sample
        per pixel as PET requires, PS3.3 C.8.9.4), before padding to an even length."""
        return self.rows * self.columns * self.number_of_frames * self.bits_allocated // 8


class _Problems:
    """Collects what is missing or invalid while reading, element by element."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self.missing: list[str] = []
        self.invalid: list[str] = []

    def raw(self, keyword: str) -> Any:
        """The element's value, None when absent or empty; a decoding failure is recorded."""
        try:
            value = _plain_value(self._ds, keyword)
            if value is _SLOW:
                # pydicom decodes lazily, so a corrupt element raises only now, with whatever
                # exception its VR converter happens to raise; all of them mean "undecodable".
                value = self._ds.get(keyword)
        except Exception:
            self.invalid.append(f"{keyword} (undecodable)")
            return None
        if value is None or value == "" or (isinstance(value, list | tuple) and not value):
            return None
        return value

    def required(self, keyword: str, convert: Callable[[Any], T], default: T) -> T:
        value = self.raw(keyword)
        if value is None:
            if not any(entry.startswith(keyword + " ") for entry in self.invalid):
                self.missing.append(keyword)
            return default
        return self._convert(keyword, value, convert, default)

    def optional(self, keyword: str, convert: Callable[[Any], T]) -> T | None:
        value = self.raw(keyword)
        if value is None:
            return None
        return self._convert(keyword, value, convert, None)

    def _convert(self, keyword: str, value: Any, convert: Callable[[Any], T], default: T) -> T:
        try:
            return convert(value)
        except (ValueError, TypeError, OverflowError, IndexError) as exc:
            self.invalid.append(f"{keyword} ({exc})")
            return default

    def raise_if_any(self) -> None:
        parts = []
        if self.missing:
            parts.append("missing mandatory attributes: " + ", ".join(self.missing))
        if self.invalid:
            parts.append("invalid attributes: " + ", ".join(self.invalid))
        if parts:
            raise InvalidInstance("; ".join(parts))


def _plain_value(ds: Dataset, keyword: str) -> Any:
    """A text or number element's value from its raw ASCII bytes, or _SLOW for pydicom's way.

    Values are what pydicom gives, as plain str (or a list of str for several numbers): the
    converters below accept both.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        return _SLOW
    element = ds.get_item(tag)
    if element is None:
        return None
    if not isinstance(element, RawDataElement) or element.value is None:
        return _SLOW
    vr = element.VR or dictionary_VR(tag)
    data = element.value
    if not data.isascii() or _ESCAPE in data:
        return _SLOW
    # PS3.5 6.2: UI values are padded with NUL, the others with spaces.
    text = data.decode("ascii").rstrip("\x00 ")
    if vr in _FAST_NUMBER_VRS:
        if _VALUE_SEPARATOR not in text:
            return text.strip()
        return [part.strip() for part in text.split(_VALUE_SEPARATOR)]
    if vr in _FAST_TEXT_VRS and _VALUE_SEPARATOR not in text:
        return text
    return _SLOW


def _text(value: Any) -> str:
    return str(value).strip()


def _uid(value: Any) -> str:
    try:
        return validate_uid(str(value))
    except InvalidInstance as exc:
        raise ValueError(str(exc)) from None


def _float(value: Any) -> float:
    # Our own message: Python's would repeat the value, which may be patient data.
    try:
        return float(value)
    except (ValueError, TypeError, OverflowError):
        raise ValueError("not a number") from None


def _integer(value: Any) -> int:
    number = _float(value)
    if not number.is_integer():
        raise ValueError("not an integer")
    return int(number)


def _positive_int(value: Any) -> int:
    number = _integer(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _finite(value: Any) -> float:
    number = _float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _numbers(count: int) -> Callable[[Any], tuple[float, ...]]:
    def convert(value: Any) -> tuple[float, ...]:
        if not isinstance(value, MultiValue | list | tuple) or len(value) != count:
            raise ValueError(f"needs {count} numbers")
        return tuple(_finite(item) for item in value)

    return convert


def _spacing(value: Any) -> tuple[float, float]:
    row, col = _numbers(2)(value)
    if row <= 0 or col <= 0:
        raise ValueError("spacing must be positive")
    return (row, col)


def _orientation(value: Any) -> tuple[float, float, float, float, float, float]:
    cosines = _numbers(6)(value)
    problem = orientation_problem(cosines)
    if problem is not None:
        raise ValueError(problem)
    return (cosines[0], cosines[1], cosines[2], cosines[3], cosines[4], cosines[5])


def _slope(value: Any) -> float:
    slope = _finite(value)
    # Zero erases the image; a negative slope turns every activity into its opposite (issue 9).
    if slope <= 0:
        raise ValueError("must be positive")
    return slope


def is_pet(ds: Dataset) -> bool:
    """PET Image Storage whose Modality, when present, is PT.

    Enhanced PET is not accepted. A PET Image Storage instance without Modality counts as PET so
    that extract_instance_header refuses it with a precise reason instead of it being ignored.
    """
    try:
        sop_class = ds.get("SOPClassUID")
        if not sop_class:
            sop_class = getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
        modality = ds.get("Modality")
    except Exception:  # pydicom decodes lazily: an undecodable header is not PET
        return False
    if str(sop_class or "").rstrip("\x00 ") not in ACCEPTED_SOP_CLASSES:
        return False
    return not modality or str(modality).strip() == PET_MODALITY


def _at_most(limit: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        number = _positive_int(value)
        if number > limit:
            raise ValueError(f"above the limit of {limit}")
        return number

    return convert


def _bits_allocated(value: Any) -> int:
    bits = _positive_int(value)
    if bits not in BITS_ALLOCATED:
        raise ValueError(f"must be one of {', '.join(map(str, sorted(BITS_ALLOCATED)))}")
    return bits


def _one_sample(value: Any) -> int:
    if _positive_int(value) != 1:
        raise ValueError("PET images have one sample per pixel (PS3.3 C.8.9.4)")
    return 1


def extract_instance_header(
    ds: Dataset, *, max_dimension: int = DEFAULT_MAX_DIMENSION
) -> InstanceHeader:
    """The header of one received instance, or InvalidInstance naming every problem.

    Rows and Columns above ``max_dimension`` are refused: an image that size is not PET, and its
    pixel data would be allocated whole later on (issue 9).
    """
    p = _Problems(ds)
    uids = {keyword: p.required(keyword, _uid, "") for keyword in UID_KEYWORDS}
    modality = p.required("Modality", _text, "")
    rows = p.required("Rows", _at_most(max_dimension), 0)
    columns = p.required("Columns", _at_most(max_dimension), 0)
    bits_allocated = p.required("BitsAllocated", _bits_allocated, 16)
    p.optional("SamplesPerPixel", _one_sample)
    number_of_frames = p.optional("NumberOfFrames", _positive_int) or 1
    spacing = p.required("PixelSpacing", _spacing, (1.0, 1.0))
    position: tuple[float, ...] = p.required("ImagePositionPatient", _numbers(3), (0.0,) * 3)
    orientation = p.required("ImageOrientationPatient", _orientation, AXIAL)
    slope = p.required("RescaleSlope", _slope, 1.0)
    intercept = p.optional("RescaleIntercept", _finite)
    number_of_slices = p.optional("NumberOfSlices", _positive_int)
    frames = (p.optional("NumberOfTimeSlices", _positive_int) or 1) * (
        p.optional("NumberOfTimeSlots", _positive_int) or 1
    )
    if number_of_slices is not None:
        number_of_slices *= frames
    slice_thickness = p.optional("SliceThickness", _finite)
    series_number = p.optional("SeriesNumber", _integer)
    instance_number = p.optional("InstanceNumber", _integer)
    text = {
        keyword: p.optional(keyword, _text) or ""
        for keyword in (
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "AccessionNumber",
            "StudyDescription",
            "SeriesDescription",
            "Manufacturer",
            "ManufacturerModelName",
        )
    }
    p.raise_if_any()
    normal = slice_normal(orientation)
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        modality=modality,
        patient_id=text["PatientID"],
        patient_name=text["PatientName"],
        patient_birth_date=text["PatientBirthDate"],
        patient_sex=text["PatientSex"],
        study_date=text["StudyDate"],
        accession_number=text["AccessionNumber"],
        study_description=text["StudyDescription"],
        series_description=text["SeriesDescription"],
        series_number=series_number,
        manufacturer=text["Manufacturer"],
        model_name=text["ManufacturerModelName"],
        instance_number=instance_number,
        slice_position=sum(a * b for a, b in zip(position, normal, strict=True)),
        slice_thickness=slice_thickness,
        number_of_slices=number_of_slices,
        rows=rows,
        columns=columns,
        pixel_spacing=spacing,
        image_orientation=orientation,
        image_position=(position[0], position[1], position[2]),
        rescale_slope=slope,
        rescale_intercept=intercept if intercept is not None else 0.0,
        bits_allocated=bits_allocated,
        number_of_frames=number_of_frames,
        decay_factor=_lenient_float(ds, "DecayFactor"),
        frame_reference_time=_lenient_float(ds, "FrameReferenceTime"),
    )


def _lenient_float(ds: Dataset, keyword: str) -> float | None:
    """A number the Validator judges, not ingest: never a reason to refuse the instance."""
    try:
        return finite_float(ds.get(keyword))
    except Exception:  # pydicom converts lazily: a malformed value raises only here
        return None
