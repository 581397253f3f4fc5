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
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from petray.errors import PermanentError

log = logging.getLogger(__name__)

UID_MAX_LENGTH = 64  # PS3.5 9.1
LO_MAX_LENGTH = 64
ST_MAX_LENGTH = 1024  # DerivationDescription
DS_MAX_LENGTH = 16  # PS3.5 6.2
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
# and signatures that would not verify. Private tags and overlays (60xx) are dropped as well.
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


def _check_uid(value: str, what: str) -> None:
    # The pattern itself, not UID(value): constructing a UID from bad text warns on its own.
    if len(value) > UID_MAX_LENGTH or not RE_VALID_UID.match(value):
        raise ValueError(f"{what} is not a valid DICOM UID")


def instance_uid(series_instance_uid: str, index: int, uid_root: str) -> str:
    """The SOP Instance UID of output slice ``index``: the same on every retry of a series."""
    return str(
        generate_uid(
            prefix=f"{uid_root.rstrip('.')}.", entropy_srcs=[series_instance_uid, str(index)]
        )
    )


def quantisation_slope(plane: np.ndarray) -> str:
    """RescaleSlope (as its DS text) mapping max|v| to at most 32767: nothing clips.

    Computed from the text actually written, rounded up, so that the decoder's slope is never
    smaller than the one the pixels were divided by.
    """
    peak = float(np.abs(plane).max()) if plane.size else 0.0
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


def _quantise(plane: np.ndarray, slope_text: str) -> np.ndarray:
    scaled = np.rint(plane.astype(np.float64) / float(slope_text))
    np.clip(scaled, -INT16_MAX, INT16_MAX, out=scaled)
    return scaled.astype("<i2")


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


def _strip(ds: Dataset) -> None:
    ds.remove_private_tags()
    for elem in list(ds):
        if elem.keyword in DROPPED_KEYWORDS or 0x6000 <= elem.tag.group <= 0x60FF:
            del ds[elem.tag]


def _derived_slice(
    source: Dataset,
    plane: np.ndarray,
    *,
    index: int,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    derivation_description: str,
    now: datetime,
) -> Dataset:
    reference = _source_reference(source)
    ds = source
    _strip(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = sop_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:LO_MAX_LENGTH]
    ds.InstanceNumber = index + 1
    if "ImageIndex" in ds or ds.SOPClassUID == PositronEmissionTomographyImageStorage:
        ds.ImageIndex = index + 1  # PET Image module, Type 1: follows our slice order
    ds.ImageType = IMAGE_TYPE
    ds.DerivationDescription = derivation_description[:ST_MAX_LENGTH]
    ds.SourceImageSequence = DicomSequence([reference])
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S.%f")
    slope_text = quantisation_slope(plane)
    stored = _quantise(plane, slope_text)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed: a denoiser may leave small negative values
    ds.RescaleSlope = slope_text
    ds.RescaleIntercept = "0"  # PET Image module: intercept shall be zero
    ds.add_new("PixelData", "OW", stored.tobytes())  # explicit VR: 16-bit words are OW
    return ds


def _write_atomic(ds: Dataset, path: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    """Write one DICOM file per z slice of ``volume`` into ``outdir``; return their paths.

    ``source_paths[z]`` is the source slice of ``volume[z]``. File names and SOP Instance UIDs
    depend only on the series UID and the index, so a retry overwrites the same files; files of
    an earlier, longer attempt in ``outdir`` are removed. Files are written uncompressed
    (Explicit VR Little Endian) whatever the source transfer syntax was.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got {volume.ndim} dimensions")
    if volume.shape[0] != len(source_paths):
        raise ValueError(f"{volume.shape[0]} slices but {len(source_paths)} source files")
    _check_uid(series_instance_uid, "series instance UID")
    _check_uid(uid_root, "UID root")
    if len(uid_root) > UID_MAX_LENGTH - 20:  # room for a unique suffix
        raise ValueError("UID root is too long to derive instance UIDs from it")
    outdir.mkdir(parents=True, exist_ok=True)
    now = datetime.now()
    written: list[Path] = []
    for index, source_path in enumerate(source_paths):
        plane = volume[index]
        if not np.isfinite(plane).all():
            raise PermanentError(f"output slice {index} has NaN or infinite values")
        try:
            source = pydicom.dcmread(source_path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise PermanentError(f"source slice {index} is not readable ({exc})") from None
        if source.get("SeriesInstanceUID") == series_instance_uid:
            raise ValueError("the derived series must have a new SeriesInstanceUID")
        if (source.get("Rows"), source.get("Columns")) != plane.shape:
            raise PermanentError(f"output slice {index} does not match its source's size")
        ds = _derived_slice(
            source,
            plane,
            index=index,
            sop_instance_uid=instance_uid(series_instance_uid, index, uid_root),
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            series_description=series_description,
            derivation_description=derivation_description,
            now=now,
        )
        path = outdir / OUTPUT_NAME.format(index=index)
        _write_atomic(ds, path)
        written.append(path)
    keep = {p.name for p in written}
    for stale in outdir.iterdir():
        if OUTPUT_PATTERN.match(stale.name) and stale.name not in keep:
            stale.unlink()
    log.info("wrote derived series of %d slices into %s", len(written), outdir.name)
    return written
