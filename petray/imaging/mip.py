"""Maximum-intensity projections rendered as PNG, so staff see a result at a glance (issue 5).

The console shows the received series ("before") next to each output series ("after"); both are
rendered here from the DICOM files on disk, with numpy and Pillow only.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image

from petray.dicom.geometry import slice_normal

View = Literal["coronal", "sagittal", "axial"]
# Which volume axis (z, y, x) a view projects along, and which axes remain as (rows, cols).
_PROJECTION: dict[str, tuple[int, tuple[int, int]]] = {
    "coronal": (1, (0, 2)),
    "sagittal": (2, (0, 1)),
    "axial": (0, (1, 2)),
}
DEFAULT_HEIGHT = 320
MAX_WIDTH = 1024
# The brightest 0.5 % (bladder, injection site) would otherwise wash out everything else.
WINDOW_PERCENTILE = 99.5


@dataclass(frozen=True)
class Volume:
    """Voxel values (z, y, x) in real-world units and the spacing of each axis in mm."""

    voxels: np.ndarray
    spacing_zyx: tuple[float, float, float]


def mip_size(
    shape_zyx: Sequence[int],
    spacing_zyx: Sequence[float],
    *,
    view: View = "coronal",
    height: int = DEFAULT_HEIGHT,
) -> tuple[int, int]:
    """(width, height) of the PNG: fixed height, width from the physical aspect ratio."""
    if height < 1:
        raise ValueError("height must be positive")
    _, (row_axis, col_axis) = _PROJECTION[view]
    extent_rows = shape_zyx[row_axis] * spacing_zyx[row_axis]
    extent_cols = shape_zyx[col_axis] * spacing_zyx[col_axis]
    if extent_rows <= 0 or extent_cols <= 0:
        raise ValueError("the volume has no extent")
    width = max(1, min(MAX_WIDTH, round(height * extent_cols / extent_rows)))
    return width, height


def project(voxels: np.ndarray, *, view: View = "coronal") -> np.ndarray:
    """The 2-D maximum along the view's axis; slices run head (top) to feet for coronal/sagittal."""
    if voxels.ndim != 3 or 0 in voxels.shape:
        raise ValueError(f"expected a non-empty 3-D volume, got shape {voxels.shape}")
    axis, _ = _PROJECTION[view]
    image: np.ndarray = np.nanmax(voxels, axis=axis)
    # Slices are sorted with z increasing towards the head (patient +Z, PS3.3 C.7.6.2.1.1).
    return image[::-1] if view != "axial" else image


def to_png(image: np.ndarray, size: tuple[int, int]) -> bytes:
    """Grey-scale PNG, inverted (dark = high uptake) as nuclear-medicine MIPs are usually read."""
    data = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(data, WINDOW_PERCENTILE)) if data.size else 0.0
    if top <= 0:
        top = float(data.max()) if data.size and data.max() > 0 else 1.0
    scaled = np.clip(data / top, 0.0, 1.0)
    grey = (255 - np.round(scaled * 255)).astype(np.uint8)
    picture = Image.fromarray(grey, mode="L").resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render_mip_png(
    volume: Volume, *, view: View = "coronal", height: int = DEFAULT_HEIGHT
) -> bytes:
    size = mip_size(volume.voxels.shape, volume.spacing_zyx, view=view, height=height)
    return to_png(project(volume.voxels, view=view), size)


def _slice_key(ds: pydicom.Dataset) -> float:
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6:
        with contextlib.suppress(ValueError):  # degenerate: fall back to InstanceNumber
            return float(np.dot(slice_normal(orientation), np.array(position, float)))
    return float(ds.get("InstanceNumber", 0) or 0)


def load_volume(paths: Iterable[str | Path]) -> Volume:
    """Read a single-frame series into real-world values, ordered along the slice normal.

    Slices whose matrix differs from the first one are skipped: a preview must not fail on a
    stray instance, and the task's own checks report such series elsewhere.
    """
    slices: list[tuple[float, np.ndarray]] = []
    first: pydicom.Dataset | None = None
    for path in paths:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
        if first is None:
            first = ds
        elif pixels.shape != slices[0][1].shape:
            continue
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append((_slice_key(ds), pixels * slope + intercept))
    if first is None:
        raise ValueError("no DICOM files to render")
    slices.sort(key=lambda item: item[0])
    voxels = np.stack([pixels for _, pixels in slices])
    row_mm, col_mm = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    positions = np.array([key for key, _ in slices])
    steps = np.diff(positions)
    if steps.size and np.median(np.abs(steps)) > 0:
        z_mm = float(np.median(np.abs(steps)))
    else:
        z_mm = float(first.get("SliceThickness", 1.0) or 1.0)
    spacing = tuple(s if math.isfinite(s) and s > 0 else 1.0 for s in (z_mm, row_mm, col_mm))
    return Volume(voxels=voxels, spacing_zyx=(spacing[0], spacing[1], spacing[2]))


def series_files(directory: str | Path) -> list[Path]:
    """The DICOM files of an output series directory (every regular file, sorted by name)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
