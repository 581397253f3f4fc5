"""Rebuild a processed volume as a DICOM PET series for the original patient and study (issue 4).

Each output slice starts from the header of the source slice at the same z index, so patient,
study, frame of reference, equipment, acquisition and isotope attributes are exactly the sender's;
only what describes the new pixels and the new series is replaced. Strict when writing: the
result must pass dciodvfy/dcentvfy (tests check it).

Times: SeriesDate/SeriesTime and AcquisitionDate/AcquisitionTime are kept from the source. For
PET with DecayCorrection START, the decay reference is the acquisition start that SeriesTime
carries (PS3.3 C.8.9.1.1), and SUV tools compute from it; new times would silently shift every
SUV. ContentDate/ContentTime and InstanceCreationDate/Time say when petray made the pixels.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, PrivateBlock
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from pydicom.valuerep import VR

from petray.dicom.uids import is_valid_uid
from petray.dicom.vr import DS_MAX_LENGTH, LO_MAX_LENGTH, ST_MAX_LENGTH, UI_MAX_LENGTH
from petray.errors import PermanentError
from petray.imaging.vendors import derived_private, derived_units

log = logging.getLogger(__name__)

INT16_MAX = 32767  # symmetric range: -32767..32767, so the slope covers negative values too
# PS3.3 C.8.9.4.1.1: for PET images Value 1 is ORIGINAL or DERIVED and Value 2 is PRIMARY (the
# IOD has no SECONDARY); dciodvfy enforces it.
IMAGE_TYPE = ["DERIVED", "PRIMARY"]
# DCM 121322: the referenced slice is the input of the image processing that made this one.
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
OUTPUT_NAME = "{index:05d}.dcm"
OUTPUT_PATTERN = re.compile(r"^\d{5}\.dcm$")

# Attributes of the source that no longer describe the output: pixel encoding, the old
# identity of the instance and series, value ranges and LUTs in stored-value units, thumbnails,
# and signatures that would not verify. Private tags and overlays (60xx) are dropped as well,
# except each vendor's allow-list of private elements (petray.imaging.vendors), recomputed for the
# new
# pixel values.
DROPPED_KEYWORDS = frozenset(
    {
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "PixelDataProviderURL",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "SmallestPixelValueInSeries",
        "LargestPixelValueInSeries",
        "PixelPaddingValue",
        "PixelPaddingRangeLimit",
        "PlanarConfiguration",
        "ModalityLUTSequence",
        "RealWorldValueMappingSequence",
        "RescaleType",
        "IconImageSequence",
        "SourceImageSequence",
        "DerivationDescription",
        "DerivationCodeSequence",
        "InstanceCreatorUID",
        "DigitalSignaturesSequence",
        "MACParametersSequence",
        "EncryptedAttributesSequence",
        "OriginalAttributesSequence",
        "DataSetTrailingPadding",
        "ReferencedImageEvidenceSequence",
        "SourceImageEvidenceSequence",
    }
)


# What changes between the series written from one set of templates, and between the files of one
# series; everything else is encoded once per source slice. RescaleIntercept is always "0" (PET
# Image module) and so lives in the template.
SERIES_KEYWORDS = (
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "SeriesDescription",
    "DerivationDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
)
INSTANCE_KEYWORDS = ("SOPInstanceUID", "RescaleSlope", "PixelData")
_SERIES_TAGS = frozenset(Tag(keyword) for keyword in SERIES_KEYWORDS)
_INSTANCE_TAGS = frozenset(Tag(keyword) for keyword in INSTANCE_KEYWORDS)
_VARYING_TAGS: tuple[BaseTag, ...] = tuple(sorted(_SERIES_TAGS | _INSTANCE_TAGS))
_DROPPED_TAGS = frozenset(Tag(keyword) for keyword in DROPPED_KEYWORDS)
OVERLAY_GROUPS = range(0x6000, 0x6100)  # PS3.3 C.9: repeating groups 60xx
FILE_META_GROUP = 0x0002  # PS3.10 7.1; dcmwrite skips retired group lengths above it
PREAMBLE = bytes(128) + b"DICM"  # PS3.10 7.1


@dataclass(frozen=True, slots=True)
class SeriesJob:
    """One output series to write: where, and what identifies and describes it."""

    outdir: Path
    series_instance_uid: str
    series_number: int
    series_description: str
    derivation_description: str
    uid_root: str

    def __post_init__(self) -> None:
        _check_uid(self.series_instance_uid, "series instance UID")
        _check_uid(self.uid_root, "UID root")
        if len(self.uid_root) > UI_MAX_LENGTH - 20:  # room for a unique suffix
            raise ValueError("UID root is too long to derive instance UIDs from it")


@dataclass(frozen=True, slots=True)
class SliceTemplate:
    """One source slice's header, stripped and encoded once, ready for any number of series.

    ``fragments`` are the encoded (Explicit VR Little Endian) elements that are the same in
    every output of this slice, cut where the per-series and per-instance elements go, in tag
    order: ``fragments[k]`` precedes the k-th tag of the varying set. Small and picklable, so a
    task's templates can be put into the object store once and read by every filter worker.
    """

    sop_class_uid: str
    source_series_uid: str | None
    rows: int | None
    columns: int | None
    charset: tuple[str, ...]
    fragments: tuple[bytes, ...]


def _check_uid(value: str, what: str) -> None:
    # Text checked, not UID(value): constructing a UID from bad text warns on its own.
    if value != value.strip() or not is_valid_uid(value):
        raise ValueError(f"{what} is not a valid DICOM UID")


def instance_uid(series_instance_uid: str, index: int, uid_root: str) -> str:
    """The SOP Instance UID of output slice ``index``: the same on every retry of a series."""
    return str(
        generate_uid(
            prefix=f"{uid_root.rstrip('.')}.", entropy_srcs=[series_instance_uid, str(index)]
        )
    )


def _peak(plane: np.ndarray) -> float:
    # max and -min instead of abs().max(): no temporary array of the plane's size.
    return max(float(plane.max()), -float(plane.min())) if plane.size else 0.0


def _slope_text(peak: float) -> str:
    if peak == 0.0:
        return "1"
    slope = peak / INT16_MAX
    text = f"{slope:.9g}"
    if float(text) < slope:
        step = 10.0 ** (math.floor(math.log10(slope)) - 8)
        text = f"{float(text) + step:.9g}"
    if len(text) > DS_MAX_LENGTH:  # cannot happen for float32 ranges; keeps DS honest
        raise ValueError(f"slope {text} does not fit a DS value")
    return text


def quantisation_slope(plane: np.ndarray) -> str:
    """RescaleSlope (as its DS text) mapping max|v| to at most 32767: nothing clips.

    Computed from the text actually written, rounded up, so that the decoder's slope is never
    smaller than the one the pixels were divided by.
    """
    return _slope_text(_peak(plane))


class _Quantiser:
    """Float32 planes to int16 stored values, reusing two scratch buffers for a whole series."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self._scaled = np.empty(shape, dtype=np.float64)
        self._stored = np.empty(shape, dtype="<i2")

    def __call__(self, plane: np.ndarray, slope_text: str) -> np.ndarray:
        # float64: float32 would lose up to ~0.002 of a step near 32767 and break "within half a
        # step" of the original value.
        np.divide(plane, float(slope_text), out=self._scaled, dtype=np.float64)
        np.rint(self._scaled, out=self._scaled)
        np.clip(self._scaled, -INT16_MAX, INT16_MAX, out=self._scaled)
        np.copyto(self._stored, self._scaled, casting="unsafe")
        return self._stored


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code(*SOURCE_PURPOSE)])
    return item


def _is_sequence(elem: DataElement | RawDataElement) -> bool:
    if elem.VR not in (None, VR.UN):
        return bool(elem.VR == VR.SQ)
    # Implicit VR sources carry no VR, and some senders write a standard sequence as UN (pydicom
    # decodes it as SQ): the data dictionary says what the element is.
    return dictionary_has_tag(elem.tag) and dictionary_VR(elem.tag) == VR.SQ


def _strip(ds: Dataset) -> None:
    """Drop private tags (at every depth), overlays and DROPPED_KEYWORDS (top level).

    Walks tags, not elements: only sequences are decoded, where Dataset.remove_private_tags
    decodes every element of the header (a quarter of the old per-file cost).
    """
    for tag in list(ds.keys()):
        if (
            tag.is_private
            or tag.group in OVERLAY_GROUPS
            or tag in _DROPPED_TAGS
            or (tag.element == 0 and tag.group > FILE_META_GROUP)  # retired group lengths
        ):
            del ds[tag]
        elif _is_sequence(ds.get_item(tag)):
            for item in ds[tag].value:
                _strip_private(item)


def _strip_private(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        if tag.is_private:
            del ds[tag]
        elif _is_sequence(ds.get_item(tag)):
            for item in ds[tag].value:
                _strip_private(item)


def _charset(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("SpecificCharacterSet")
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _writer(buffer: bytearray | None = None) -> DicomBytesIO:
    fp = DicomBytesIO(buffer if buffer is not None else b"")
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    return fp


def _encode(elements: Sequence[DataElement | RawDataElement], charset: tuple[str, ...]) -> bytes:
    """Elements (already in tag order) encoded Explicit VR Little Endian, as dcmwrite would."""
    fp = _writer()
    for elem in elements:
        write_data_element(fp, elem, list(charset) or None)
    return bytes(fp.getvalue())


def _template(index: int, path: Path) -> SliceTemplate:
    try:
        source = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PermanentError(f"source slice {index} is not readable ({exc})") from None
    if "SOPClassUID" not in source or "SOPInstanceUID" not in source:
        raise PermanentError(f"source slice {index} has no SOP Class or Instance UID")
    reference = _source_reference(source)
    source_series_uid = source.get("SeriesInstanceUID")
    rows, columns = source.get("Rows"), source.get("Columns")
    kept_private = derived_private(source)
    units = derived_units(source)
    _strip(source)
    blocks: dict[tuple[int, str], PrivateBlock] = {}
    for kept in kept_private:
        key = (kept.element.group, kept.element.creator)
        if key not in blocks:
            blocks[key] = source.private_block(*key, create=True)
        blocks[key].add_new(kept.element.offset, kept.element.vr, kept.value)
    if units is not None:
        source.Units = units  # the output's pixels are Bq/ml whatever the source stored
    # Values that are the same for every output of this slice, whatever the filter.
    source.InstanceNumber = index + 1
    if "ImageIndex" in source or source.SOPClassUID == PositronEmissionTomographyImageStorage:
        source.ImageIndex = index + 1  # PET Image module, Type 1: follows our slice order
    source.ImageType = IMAGE_TYPE
    source.SourceImageSequence = DicomSequence([reference])
    source.SamplesPerPixel = 1
    source.PhotometricInterpretation = "MONOCHROME2"
    source.BitsAllocated = 16
    source.BitsStored = 16
    source.HighBit = 15
    source.PixelRepresentation = 1  # signed: a denoiser may leave small negative values
    source.RescaleIntercept = "0"  # PET Image module: intercept shall be zero
    charset = _charset(source)
    # Decode every element with the source's own encoding (implicit VR gets its VR from the
    # dictionary), then resolve "US or SS"-style VRs for the explicit VR output, as dcmwrite does.
    tags = [tag for tag in sorted(source.keys()) if tag not in _VARYING_TAGS]
    elements: list[DataElement | RawDataElement]
    if source.original_encoding == (False, True):
        # Already Explicit VR Little Endian: the undecoded bytes are written as they are, as
        # dcmwrite itself does when the encoding does not change.
        elements = [source.get_item(tag) for tag in tags]
    else:
        # Decode with the source's own encoding (implicit VR takes its VR from the dictionary),
        # then resolve "US or SS"-style VRs for the explicit VR output, as dcmwrite does.
        elements = [source[tag] for tag in tags]
        correct_ambiguous_vr(source, True)
    fragments: list[bytes] = []
    start = 0
    for boundary in (*_VARYING_TAGS, None):
        stop = start
        while stop < len(elements) and (boundary is None or elements[stop].tag < boundary):
            stop += 1
        fragments.append(_encode(elements[start:stop], charset))
        start = stop
    return SliceTemplate(
        sop_class_uid=str(source.SOPClassUID),
        source_series_uid=None if source_series_uid is None else str(source_series_uid),
        rows=None if rows is None else int(rows),
        columns=None if columns is None else int(columns),
        charset=charset,
        fragments=tuple(fragments),
    )


def prepare_templates(source_paths: Sequence[Path]) -> tuple[SliceTemplate, ...]:
    """Read each source header once and prepare slice ``z``'s template from ``source_paths[z]``.

    The costly part of writing a derived series (decoding, stripping and encoding ~100 header
    elements) is done here once per task instead of once per file of every filter's series.
    """
    return tuple(_template(index, Path(path)) for index, path in enumerate(source_paths))


def _series_elements(job: SeriesJob, now: datetime, charset: tuple[str, ...]) -> dict[int, bytes]:
    ds = Dataset()
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.SeriesDescription = job.series_description[:LO_MAX_LENGTH]
    ds.DerivationDescription = job.derivation_description[:ST_MAX_LENGTH]
    ds.SeriesInstanceUID = job.series_instance_uid
    ds.SeriesNumber = job.series_number
    return {int(elem.tag): _encode([elem], charset) for elem in ds}


class _FileMeta:
    """File Meta Information of one SOP class, encoded once; each file splices in its UID."""

    def __init__(self, sop_class_uid: str) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(sop_class_uid)  # placeholder, never written
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        # Adds the version and implementation UID/name exactly as dcmwrite does.
        write_file_meta_info(_writer(), meta, enforce_standard=True)
        elements = [e for e in meta if e.tag != Tag("FileMetaInformationGroupLength")]
        split = Tag("MediaStorageSOPInstanceUID")
        self._before = _encode([e for e in elements if e.tag < split], ())
        self._after = _encode([e for e in elements if e.tag > split], ())

    def __call__(self, sop_instance_uid: str) -> bytes:
        uid = _encode([DataElement(Tag("MediaStorageSOPInstanceUID"), VR.UI, sop_instance_uid)], ())
        length = len(self._before) + len(uid) + len(self._after)
        group = _encode([DataElement(Tag("FileMetaInformationGroupLength"), VR.UL, length)], ())
        return b"".join((group, self._before, uid, self._after))


def _write_atomic(parts: Sequence[bytes | memoryview], path: Path) -> None:
    # One writer per output directory (the task's filter job), so a fixed temporary name is
    # enough; the rename means a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.writelines(parts)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pixel_data_header(nbytes: int) -> bytes:
    # Explicit VR: 16-bit words are OW; the value is written straight from the int16 buffer.
    fp = _writer()
    fp.write_tag(Tag("PixelData"))
    fp.write(VR.OW.encode())
    fp.write_US(0)  # reserved (PS3.5 7.1.2)
    fp.write_UL(nbytes)
    return bytes(fp.getvalue())


def _check_series(volume: np.ndarray, templates: Sequence[SliceTemplate], job: SeriesJob) -> None:
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got {volume.ndim} dimensions")
    if volume.shape[0] != len(templates):
        raise ValueError(f"{volume.shape[0]} slices but {len(templates)} source files")
    if any(t.source_series_uid == job.series_instance_uid for t in templates):
        raise ValueError("the derived series must have a new SeriesInstanceUID")
    plane_shape = (int(volume.shape[1]), int(volume.shape[2]))
    for index, template in enumerate(templates):
        if (template.rows, template.columns) != plane_shape:
            raise PermanentError(f"output slice {index} does not match its source's size")


def _encoded_files(
    volume: np.ndarray, templates: Sequence[SliceTemplate], job: SeriesJob, now: datetime
) -> Iterator[tuple[str, list[bytes | memoryview]]]:
    """(file name, its encoded parts) for each z slice, in order.

    The parts of one file are valid only until the next is produced: the pixels are a view of a
    scratch buffer reused for the whole series.
    """
    _check_series(volume, templates, job)
    plane_shape = (int(volume.shape[1]), int(volume.shape[2]))
    series_parts: dict[tuple[str, ...], dict[int, bytes]] = {}
    file_metas: dict[str, _FileMeta] = {}
    quantise = _Quantiser(plane_shape)
    pixel_header = _pixel_data_header(volume.shape[1] * volume.shape[2] * 2)
    uid_tag, slope_tag, pixel_tag = (int(Tag(k)) for k in INSTANCE_KEYWORDS)
    for index, template in enumerate(templates):
        plane = volume[index]
        if not np.isfinite(plane).all():
            raise PermanentError(f"output slice {index} has NaN or infinite values")
        if template.charset not in series_parts:
            series_parts[template.charset] = _series_elements(job, now, template.charset)
        varying = dict(series_parts[template.charset])
        sop_instance_uid = instance_uid(job.series_instance_uid, index, job.uid_root)
        slope_text = quantisation_slope(plane)
        stored = quantise(plane, slope_text)
        varying[uid_tag] = _encode([DataElement(uid_tag, VR.UI, sop_instance_uid)], ())
        varying[slope_tag] = _encode([DataElement(slope_tag, VR.DS, slope_text)], ())
        varying[pixel_tag] = pixel_header
        if template.sop_class_uid not in file_metas:
            file_metas[template.sop_class_uid] = _FileMeta(template.sop_class_uid)
        file_meta = file_metas[template.sop_class_uid](sop_instance_uid)
        parts: list[bytes | memoryview] = [PREAMBLE, file_meta]
        for fragment, tag in zip(template.fragments, _VARYING_TAGS, strict=False):
            parts.append(fragment)
            parts.append(varying[int(tag)])
            if int(tag) == pixel_tag:
                parts.append(stored.data.cast("B"))
        parts.append(template.fragments[-1])
        yield OUTPUT_NAME.format(index=index), parts


def _remove_stale(outdir: Path, keep: set[str]) -> None:
    # Files of an earlier, longer attempt of the same series.
    for stale in outdir.iterdir():
        if OUTPUT_PATTERN.match(stale.name) and stale.name not in keep:
            stale.unlink()


def write_series(
    volume: np.ndarray,
    templates: Sequence[SliceTemplate],
    job: SeriesJob,
    *,
    now: datetime | None = None,
) -> list[Path]:
    """Write one DICOM file per z slice of ``volume`` into ``job.outdir``; return their paths.

    ``templates[z]`` (from :func:`prepare_templates`) describes the source slice of
    ``volume[z]``. File names and SOP Instance UIDs depend only on the series UID and the index,
    so a retry overwrites the same files; files of an earlier, longer attempt are removed. Files
    are written uncompressed (Explicit VR Little Endian) whatever the source transfer syntax was.
    """
    _check_series(volume, templates, job)
    job.outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, parts in _encoded_files(volume, templates, job, now or datetime.now()):
        path = job.outdir / name
        _write_atomic(parts, path)
        written.append(path)
    _remove_stale(job.outdir, {p.name for p in written})
    log.info("wrote derived series of %d slices into %s", len(written), job.outdir.name)
    return written


@dataclass(frozen=True, slots=True)
class EncodedSeries:
    """A whole series encoded in memory, to be written on another node (issue 12).

    One contiguous buffer rather than a list of files: it travels through Ray's object store as
    a single array, read there without a copy, and file ``k`` is
    ``data[offsets[k]:offsets[k + 1]]``.
    """

    names: tuple[str, ...]
    offsets: tuple[int, ...]
    data: np.ndarray  # uint8

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.names) + 1 or self.offsets[-1] != self.data.nbytes:
            raise ValueError("offsets do not describe the encoded files")

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def encode_series(
    volume: np.ndarray,
    templates: Sequence[SliceTemplate],
    job: SeriesJob,
    *,
    now: datetime | None = None,
) -> EncodedSeries:
    """The files :func:`write_series` would write, encoded into one buffer instead."""
    names: list[str] = []
    offsets = [0]
    buffer = bytearray()
    for name, parts in _encoded_files(volume, templates, job, now or datetime.now()):
        for part in parts:
            buffer += part
        names.append(name)
        offsets.append(len(buffer))
    return EncodedSeries(tuple(names), tuple(offsets), np.frombuffer(buffer, dtype=np.uint8))


def write_encoded(encoded: EncodedSeries, outdir: Path) -> list[Path]:
    """Write a series encoded elsewhere into ``outdir``, as :func:`write_series` would have."""
    outdir.mkdir(parents=True, exist_ok=True)
    view = encoded.data.data.cast("B")  # the array's own buffer: no copy
    written: list[Path] = []
    for index, name in enumerate(encoded.names):
        if not OUTPUT_PATTERN.match(name):  # names come from another process: no paths
            raise PermanentError("an encoded series names a file it may not write")
        path = outdir / name
        _write_atomic([view[encoded.offsets[index] : encoded.offsets[index + 1]]], path)
        written.append(path)
    _remove_stale(outdir, {p.name for p in written})
    log.info("wrote derived series of %d slices into %s", len(written), outdir.name)
    return written


def write_derived_series(
    volume: np.ndarray,
    source_paths: Sequence[Path],
    outdir: Path,
    *,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    derivation_description: str,
    uid_root: str,
) -> list[Path]:
    """One series straight from source files: :func:`prepare_templates` + :func:`write_series`.

    For several series of the same source, prepare the templates once and call
    :func:`write_series` for each.
    """
    job = SeriesJob(
        outdir=outdir,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        series_description=series_description,
        derivation_description=derivation_description,
        uid_root=uid_root,
    )
    if volume.ndim == 3 and volume.shape[0] != len(source_paths):
        raise ValueError(f"{volume.shape[0]} slices but {len(source_paths)} source files")
    return write_series(volume, prepare_templates(source_paths), job)
