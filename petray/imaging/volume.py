"""A PET series as one float32 activity volume, ordered along the slice normal (issue 3).

Order comes from geometry only: each slice's ImagePositionPatient projected on the normal of
ImageOrientationPatient (row x column direction cosines, PS3.3 C.7.6.2.1.1). InstanceNumber and
file order are not trusted: senders renumber, and a PACS forwards in any order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from petray.dicom import geometry
from petray.errors import PermanentError, ValidationFailed
from petray.imaging.vendors import activity_factor

log = logging.getLogger(__name__)

# Direction cosines are written with a handful of decimals; anything closer than this is the same
# orientation. Spacing values likewise (mm).
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 1e-3
# Slice positions may jitter by rounding; a step further than this from the median is a gap or
# an overlap, and the voxel grid would lie about where the activity is.
SLICE_STEP_RELATIVE_TOLERANCE = 0.1
SAME_POSITION_MM = 1e-3


@dataclass(frozen=True, slots=True)
class PetVolume:
    """Voxels in Bq/ml (float32, C order, axes z, y, x) and where they are in the patient.

    Bq/ml whatever the vendor stored: Philips counts are converted slice by slice with their
    activity concentration scale factor (``petray.imaging.vendors``).

    ``slice_paths[k]`` and ``positions[k]`` describe ``data[k]``; z grows along the slice normal.
    """

    data: np.ndarray
    spacing_zyx: tuple[float, float, float]
    slice_paths: tuple[Path, ...]
    orientation: tuple[float, float, float, float, float, float]
    positions: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.data.shape
        return (z, y, x)


@dataclass(frozen=True, slots=True)
class _SliceHeader:
    path: Path
    rows: int
    columns: int
    orientation: np.ndarray
    position: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        values = np.array([float(v) for v in value], dtype=np.float64) if value else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (count,) or not np.isfinite(values).all():
        raise PermanentError(f"{path.name}: {keyword} is missing or not {count} numbers")
    return values


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PermanentError(f"{path.name}: not a readable DICOM file ({exc})") from None


def _header_of(ds: Dataset, path: Path) -> _SliceHeader:
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PermanentError(f"{path.name}: multi-frame images are not supported")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PermanentError(f"{path.name}: only single-sample (grayscale) images are supported")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise PermanentError(f"{path.name}: Rows/Columns missing")
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if (spacing <= 0).any():
        raise PermanentError(f"{path.name}: PixelSpacing must be positive")
    orientation = _floats(ds, "ImageOrientationPatient", 6, path)
    thickness = ds.get("SliceThickness")
    return _SliceHeader(
        path=path,
        rows=int(rows),
        columns=int(columns),
        orientation=orientation,
        position=_floats(ds, "ImagePositionPatient", 3, path),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
    )


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """The image plane's unit normal (petray.dicom.geometry) as an array; a degenerate
    orientation fails the task."""
    try:
        return np.array(geometry.slice_normal([float(v) for v in orientation]))
    except ValueError as exc:
        raise PermanentError(str(exc)) from None


def _check_consistent(headers: Sequence[_SliceHeader]) -> None:
    first = headers[0]
    for header in headers[1:]:
        if (header.rows, header.columns) != (first.rows, first.columns):
            raise PermanentError(
                f"inconsistent image size: {header.rows}x{header.columns} in {header.path.name}, "
                f"{first.rows}x{first.columns} in {first.path.name}"
            )
        if not np.allclose(header.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise PermanentError(f"inconsistent ImageOrientationPatient in {header.path.name}")
        if not np.allclose(header.pixel_spacing, first.pixel_spacing, atol=SPACING_TOLERANCE_MM):
            raise PermanentError(f"inconsistent PixelSpacing in {header.path.name}")


def _slice_step(distances: np.ndarray, first: _SliceHeader) -> float:
    if len(distances) == 1:
        if first.slice_thickness and first.slice_thickness > 0:
            return first.slice_thickness
        raise PermanentError("a single slice without SliceThickness has no z spacing")
    steps = np.diff(distances)
    if (steps < SAME_POSITION_MM).any():
        raise PermanentError("two slices share the same position along the slice normal")
    step = float(np.median(steps))
    if (np.abs(steps - step) > SLICE_STEP_RELATIVE_TOLERANCE * step).any():
        raise PermanentError(
            f"irregular slice spacing (from {steps.min():.3f} to {steps.max():.3f} mm, "
            f"median {step:.3f} mm): missing or overlapping slices"
        )
    return step


# Uncompressed little-endian transfer syntaxes: 16-bit pixels are read straight from the bytes.
_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


def _native_pixels(ds: Dataset, shape: tuple[int, ...]) -> np.ndarray | None:
    """The plane's stored values without pydicom's pixel handlers, for the common case only
    (uncompressed little endian, 16 bits allocated and stored, the exact length); else None."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in _NATIVE_LITTLE_ENDIAN or ds.get("BitsAllocated") != 16:
        return None
    if ds.get("BitsStored") != 16 or ds.get("PixelRepresentation") not in (0, 1):
        return None
    raw = ds.get("PixelData")
    if not isinstance(raw, bytes) or len(raw) != 2 * math.prod(shape):
        return None
    dtype = "<i2" if ds.PixelRepresentation == 1 else "<u2"
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _rescale_params(ds: Dataset, path: Path) -> tuple[float, float, float]:
    """RescaleSlope, RescaleIntercept and the vendor's Bq/ml per rescaled value."""
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise PermanentError(f"{path.name}: RescaleSlope/RescaleIntercept not finite")
    try:
        # Bq/ml per rescaled value: 1 for BQML, the vendor's per-slice factor for counts.
        factor = activity_factor(ds)
    except ValidationFailed as exc:
        raise PermanentError(f"{path.name}: {exc}") from None
    return slope, intercept, factor


def _rescale_into(plane: np.ndarray, ds: Dataset, path: Path) -> None:
    try:
        pixels = _native_pixels(ds, plane.shape)
        if pixels is None:
            pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot use this slice"
        raise PermanentError(f"{path.name}: pixel data cannot be decoded ({exc})") from None
    if pixels.shape != plane.shape:
        raise PermanentError(f"{path.name}: pixel data shape {pixels.shape} != {plane.shape}")
    _scale_into(plane, pixels, *_rescale_params(ds, path), path)


# Beyond this bound a float32 product may overflow; under it, integer pixels cannot.
_FLOAT32_SAFE = 1e37


def _scale_into(
    plane: np.ndarray,
    pixels: np.ndarray,
    slope: float,
    intercept: float,
    factor: float,
    path: Path,
) -> None:
    """``plane = (pixels * slope + intercept) * factor`` in float32, written into the volume's
    own slice (no per-slice float64 copy), one pass when there is no intercept."""
    bounded = False
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        largest = float(max(-np.iinfo(pixels.dtype).min, np.iinfo(pixels.dtype).max))
        # 16-bit values so rescaled are finite: no pass over the plane to check them.
        bounded = (largest * abs(slope) + abs(intercept)) * abs(factor) < _FLOAT32_SAFE
    source = pixels
    if intercept != 0.0:
        np.multiply(pixels, np.float32(slope), out=plane, dtype=np.float32)
        plane += np.float32(intercept)
        source, slope = plane, 1.0
    scale = slope * factor
    if scale != 1.0:
        np.multiply(source, np.float32(scale), out=plane, dtype=np.float32)
    elif source is pixels:
        plane[...] = pixels
    if not bounded and not np.isfinite(plane).all():
        raise PermanentError(f"{path.name}: rescaled values are not finite")


@dataclass(frozen=True, slots=True)
class StoredSlice:
    """What the Store SCP learnt of a slice while receiving it, for building the volume on
    arrival (issue 13) without parsing the file again: its geometry, its rescale, and where its
    native 16-bit little-endian stored values lie in the file it wrote.

    Only for the common case (``stored_slice`` returns None otherwise); anything else is read
    from the file with pydicom, as ``load_series_volume`` does.
    """

    rows: int
    columns: int
    orientation: tuple[float, ...]
    position: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    slope: float
    intercept: float
    factor: float
    signed: bool
    # Byte offset of the PixelData value in the file.
    pixel_offset: int


class KnownHeader(Protocol):
    """What the Store SCP already read and checked of a slice's header (petray.dicom.header's
    ``InstanceHeader``): ``stored_slice`` need not convert those elements again."""

    @property
    def rows(self) -> int: ...
    @property
    def columns(self) -> int: ...
    @property
    def image_orientation(self) -> tuple[float, float, float, float, float, float]: ...
    @property
    def image_position(self) -> tuple[float, float, float]: ...
    @property
    def pixel_spacing(self) -> tuple[float, float]: ...
    @property
    def slice_thickness(self) -> float | None: ...
    @property
    def rescale_slope(self) -> float: ...
    @property
    def rescale_intercept(self) -> float: ...
    @property
    def bits_allocated(self) -> int: ...
    @property
    def number_of_frames(self) -> int: ...


def stored_slice(
    ds: Dataset, syntax: str, pixel_offset: int, *, known: KnownHeader | None = None
) -> StoredSlice | None:
    """The slice's ``StoredSlice`` from its header ``ds`` (parsed up to PixelData), or None
    when it is not a native 16-bit little-endian single-frame slice with valid geometry.

    ``known``: the same header as the Store SCP extracted and checked it (geometry and rescale
    valid, or the instance was refused): only what it lacks is read from ``ds`` (issue 13: a
    second conversion of every element cost the SCP ~0.13 ms per instance).
    """
    if syntax not in _NATIVE_LITTLE_ENDIAN:
        return None
    if known is not None:
        if known.bits_allocated != 16 or known.number_of_frames != 1:
            return None
    elif ds.get("BitsAllocated") != 16:
        return None
    if ds.get("BitsStored") != 16 or ds.get("PixelRepresentation") not in (0, 1):
        return None
    if known is not None:
        try:
            factor = activity_factor(ds)
        except (ValidationFailed, TypeError, ValueError):
            return None
        return StoredSlice(
            rows=known.rows,
            columns=known.columns,
            orientation=known.image_orientation,
            position=known.image_position,
            pixel_spacing=known.pixel_spacing,
            slice_thickness=known.slice_thickness,
            slope=known.rescale_slope,
            intercept=known.rescale_intercept,
            factor=factor,
            signed=ds.PixelRepresentation == 1,
            pixel_offset=pixel_offset,
        )
    try:
        header = _header_of(ds, Path("slice"))
        slope, intercept, factor = _rescale_params(ds, Path("slice"))
    except (PermanentError, TypeError, ValueError):
        return None
    x, y, z = (float(v) for v in header.position)
    row, column = header.pixel_spacing
    return StoredSlice(
        rows=header.rows,
        columns=header.columns,
        orientation=tuple(float(v) for v in header.orientation),
        position=(x, y, z),
        pixel_spacing=(row, column),
        slice_thickness=header.slice_thickness,
        slope=slope,
        intercept=intercept,
        factor=factor,
        signed=ds.PixelRepresentation == 1,
        pixel_offset=pixel_offset,
    )


def _reorder_planes(data: np.ndarray, order: np.ndarray) -> None:
    """``data[k] = data[order[k]]`` for every k, in place, one spare plane at a time."""
    placed = np.zeros(len(order), dtype=bool)
    spare = np.empty_like(data[0])
    for start in range(len(order)):
        if placed[start]:
            continue
        if order[start] == start:
            placed[start] = True
            continue
        spare[...] = data[start]
        k = start
        while True:
            placed[k] = True
            source = int(order[k])
            if source == start:
                data[k] = spare
                break
            data[k] = data[source]
            k = source


def load_series_volume(paths: Sequence[Path]) -> PetVolume:
    """Read a single-frame PET series into a float32 activity volume ordered along the normal.

    Raises PermanentError naming the file and the inconsistency (size, orientation, spacing,
    duplicate or irregular positions, undecodable pixels).
    """
    # Each file is read once (issue 13: the Packer's read was two passes): header and pixels
    # go into the volume in file order, and the planes are put in slice order in place.
    builder = VolumeBuilder(expected=len(paths))
    for path in paths:
        builder.add(Path(path))
    return builder.finish()


class VolumeBuilder:
    """A series' volume built one slice at a time, in any order, as the slices arrive.

    ``add`` reads one file (header and pixels) into the next plane; ``finish`` checks the
    series as a whole and puts the planes in slice order, in place. ``expected`` (the declared
    NumberOfSlices, when there is one) sizes the buffer once; without it, or past it, the buffer
    doubles. Errors are ``PermanentError`` naming the file, as ``load_series_volume``'s.
    """

    def __init__(self, expected: int | None = None) -> None:
        self._expected = expected if expected and expected > 0 else None
        self._headers: list[_SliceHeader] = []
        self._data: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self._headers)

    @property
    def nbytes(self) -> int:
        """The memory the buffer holds (its capacity, not only the planes filled)."""
        return 0 if self._data is None else int(self._data.nbytes)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(h.path for h in self._headers)

    def add(self, path: Path, stored: StoredSlice | None = None) -> None:
        """Read one slice into the next plane: with ``stored`` (what the SCP learnt of it),
        only its pixel values are read, from where it says; otherwise the file is parsed."""
        if stored is not None:
            self._add_stored(path, stored)
            return
        ds = _read(path)
        header = _header_of(ds, path)
        _rescale_into(self._next_plane(header), ds, path)
        self._headers.append(header)

    def _add_stored(self, path: Path, stored: StoredSlice) -> None:
        header = _SliceHeader(
            path=path,
            rows=stored.rows,
            columns=stored.columns,
            orientation=np.array(stored.orientation, dtype=np.float64),
            position=np.array(stored.position, dtype=np.float64),
            pixel_spacing=stored.pixel_spacing,
            slice_thickness=stored.slice_thickness,
        )
        count = stored.rows * stored.columns
        try:
            pixels = np.fromfile(
                path,
                dtype="<i2" if stored.signed else "<u2",
                count=count,
                offset=stored.pixel_offset,
            )
        except (OSError, ValueError) as exc:
            raise PermanentError(f"{path.name}: not a readable file ({exc})") from None
        if pixels.size != count:
            raise PermanentError(f"{path.name}: pixel data end before {count} values")
        plane = self._next_plane(header)
        _scale_into(
            plane,
            pixels.reshape(plane.shape),
            stored.slope,
            stored.intercept,
            stored.factor,
            path,
        )
        self._headers.append(header)

    def _next_plane(self, header: _SliceHeader) -> np.ndarray:
        if self._data is None:
            capacity = self._expected or 16
            self._data = np.empty((capacity, header.rows, header.columns), dtype=np.float32)
        elif (header.rows, header.columns) != self._data.shape[1:]:
            _check_consistent([self._headers[0], header])  # names both sizes
        z = len(self._headers)
        if z == len(self._data):
            self._grow()
        plane: np.ndarray = self._data[z]
        return plane

    def _grow(self) -> None:
        assert self._data is not None
        bigger = np.empty((2 * len(self._data), *self._data.shape[1:]), dtype=np.float32)
        bigger[: len(self._data)] = self._data
        self._data = bigger

    def finish(self) -> PetVolume:
        if self._data is None:
            raise PermanentError("no slices to build a volume from")
        headers = self._headers
        data = self._data[: len(headers)]
        _check_consistent(headers)
        normal = slice_normal(headers[0].orientation)
        distances = np.array([float(h.position @ normal) for h in headers])
        order = np.argsort(distances, kind="stable")
        headers = [headers[i] for i in order]
        distances = distances[order]
        step = _slice_step(distances, headers[0])
        _reorder_planes(data, order)
        first = headers[0]
        orientation = tuple(float(v) for v in first.orientation)
        log.debug("loaded volume %s with z step %.3f mm", data.shape, step)
        return PetVolume(
            data=data,
            spacing_zyx=(step, first.pixel_spacing[0], first.pixel_spacing[1]),
            slice_paths=tuple(h.path for h in headers),
            orientation=(
                orientation[0],
                orientation[1],
                orientation[2],
                orientation[3],
                orientation[4],
                orientation[5],
            ),
            positions=np.stack([h.position for h in headers]),
        )
