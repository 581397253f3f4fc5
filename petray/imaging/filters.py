"""Gaussian post-filters applied to the denoised volume before it is rebuilt as DICOM (issue 4).

A filter is site configuration (``petray.db.models.PostFilter``); :class:`FilterSpec` is its
validated, picklable value that travels to a FilterWorker. The arithmetic lives here so that the
worker is a thin shell and the tests compare against scipy without Ray.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from petray.dicom.vr import LO_MAX_LENGTH

log = logging.getLogger(__name__)

FilterMode = Literal["append", "replace"]
FILTER_MODES: tuple[FilterMode, ...] = ("append", "replace")

IS_MAX = 2**31 - 1  # PS3.5 6.2, VR IS (SeriesNumber)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # ~2.3548 for a Gaussian
# "nearest" repeats the edge voxel: the volume edge is not followed by zeros (that would dim the
# outer slices of the field of view) nor by a mirror (which invents structure at the edge).
GAUSSIAN_MODE = "nearest"
# Slices of the inputs read at a time (about 12 MB of a 440x440 volume).
SLAB_SLICES = 16


def _check_lo(value: str, what: str) -> None:
    if len(value) > LO_MAX_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters; VR LO allows {LO_MAX_LENGTH}")
    if "\\" in value or any(ord(ch) < 0x20 for ch in value):
        raise ValueError(f"{what} must not contain a backslash or control characters (VR LO)")


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """One post-filter: what it does to the voxels and how its output series is named.

    ``noise_pct`` blends that percentage of the service's noise estimate back into the denoised
    volume (0 = none, 100 = the whole noise, i.e. roughly the original image), before smoothing.
    """

    id: int | None
    description: str
    series_number: int
    fwhm_mm: float = 0.0
    noise_pct: float = 0.0
    mode: FilterMode = "append"

    def __post_init__(self) -> None:
        if not self.description.strip():
            raise ValueError("filter description must not be empty")
        _check_lo(self.description, "filter description")
        if isinstance(self.series_number, bool) or not isinstance(self.series_number, int):
            raise ValueError("series number must be an integer")
        if not 0 <= self.series_number <= IS_MAX:
            raise ValueError(f"series number must be between 0 and {IS_MAX} (VR IS)")
        if not math.isfinite(self.fwhm_mm) or self.fwhm_mm < 0:
            raise ValueError("FWHM must be a finite number of millimetres >= 0")
        if not math.isfinite(self.noise_pct) or not 0 <= self.noise_pct <= 100:
            raise ValueError("noise blending must be a percentage between 0 and 100")
        if self.mode not in FILTER_MODES:
            raise ValueError(f"mode must be one of {', '.join(FILTER_MODES)}, not {self.mode!r}")

    @property
    def smooths(self) -> bool:
        return self.fwhm_mm > 0


def fwhm_to_sigma_voxels(
    fwhm_mm: float, spacing_zyx: Sequence[float]
) -> tuple[float, float, float]:
    """Sigma per axis, in voxels, of an isotropic Gaussian of ``fwhm_mm`` on this voxel grid."""
    if not math.isfinite(fwhm_mm) or fwhm_mm < 0:
        raise ValueError("FWHM must be a finite number of millimetres >= 0")
    if len(spacing_zyx) != 3:
        raise ValueError("voxel spacing must have three values (z, y, x)")
    if any(not math.isfinite(s) or s <= 0 for s in spacing_zyx):
        raise ValueError("voxel spacing must be positive millimetres")
    sigma_mm = fwhm_mm / FWHM_PER_SIGMA
    z, y, x = (sigma_mm / float(s) for s in spacing_zyx)
    return (z, y, x)


def apply_post_filter(
    denoised: np.ndarray,
    noise: np.ndarray | None,
    spec: FilterSpec,
    spacing_zyx: Sequence[float],
    *,
    done_with: Callable[[np.ndarray], object] | None = None,
) -> np.ndarray:
    """Return a new float32 volume: ``denoised + noise_pct/100 * noise``, then the Gaussian.

    Blending comes first so that the Gaussian smooths the re-added noise as well: the output is
    what the site would get by filtering an image with that much noise left in. The inputs are
    never written to; they may be read-only views from the Ray object store. They are read a
    slab of slices at a time, and ``done_with`` gets each input slab once it is consumed (a
    FilterWorker lets go of those object-store pages: issue 13).
    """
    if denoised.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got {denoised.ndim} dimensions")
    sigma = fwhm_to_sigma_voxels(spec.fwhm_mm, spacing_zyx)
    blend = noise is not None and spec.noise_pct > 0
    if noise is not None and blend and noise.shape != denoised.shape:
        raise ValueError(f"noise shape {noise.shape} differs from volume {denoised.shape}")
    if spec.noise_pct > 0 and noise is None:
        # The service's noise.npy is optional; the series is still useful without the blend.
        log.warning("filter %s asks for noise blending but the result has no noise", spec.id)
    # One new float32 array; the ops afterwards touch only it, never the inputs.
    blended = np.empty(denoised.shape, dtype=np.float32)
    weight = np.float32(spec.noise_pct / 100.0)
    for start in range(0, denoised.shape[0], SLAB_SLICES):
        z = slice(start, start + SLAB_SLICES)
        if noise is not None and blend:
            np.multiply(noise[z], weight, out=blended[z], dtype=np.float32)
            blended[z] += denoised[z]
            if done_with is not None:
                done_with(noise[z])
        else:
            blended[z] = denoised[z]
        if done_with is not None:
            done_with(denoised[z])
    if not spec.smooths:
        return blended
    # Imported here: only FilterWorkers filter, and scipy.ndimage costs every other process
    # (actors, CLI, console) a quarter of a second at start for nothing.
    from scipy import ndimage

    # In place (issue 13): the separable filter works line by line through its own buffers,
    # so the volume's one private copy is all a FilterWorker holds (not two: 0.5 GB less for
    # 645x440x440). test_gaussian_matches_scipy_on_anisotropic_grid checks it is bit for bit
    # the out-of-place result.
    ndimage.gaussian_filter(blended, sigma=sigma, mode=GAUSSIAN_MODE, output=blended)
    return blended


def series_description(original: str, spec: FilterSpec) -> str:
    """The output SeriesDescription: appended to or replacing the original, cut to VR LO."""
    if spec.mode == "replace":
        return spec.description
    # The original is shortened, not the filter's text: that is what tells the series apart.
    room = LO_MAX_LENGTH - len(spec.description) - 1
    head = original.replace("\\", " ").strip()[: max(room, 0)].rstrip()
    return f"{head} {spec.description}" if head else spec.description
