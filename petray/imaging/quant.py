"""The quantitative check of every result (issue 15, item 2).

For the received volume and each derived series: the maximum, the peak (mean in a 1 cm³ sphere),
the mean in a body mask and the total activity, in Bq/ml (MBq for the total) and, when the
header allows it, as SUV body weight; then each derived series' relative change against the
received volume, and the site's alarm on those changes (a breach holds the task for review).

Every metric is computed on the activity concentration. SUVbw is the same concentration times one
factor per series (petray.imaging.suv), so SUV values and their relative changes follow from the
Bq/ml
numbers; a series without a weight still gets every activity metric and no SUV.

Definitions (what the README documents):

- *max*: the hottest voxel.
- *peak*: the mean in a sphere of 1 cm³ (radius 6.2 mm) centred on the voxel that maximises it
  (PERCIST's SUVpeak, without its 1.2 cm restriction to a lesion). Each voxel is weighted by the
  fraction of it inside the sphere (sampled at 5³ points), so coarse voxels still average 1 ml;
  beyond the volume's edge the edge voxel repeats. Computed exactly, but only where it can win:
  a sphere whose mean beats a value B must contain a voxel above B, so only the neighbourhoods
  of voxels above the best mean found so far are searched (tile by tile, hottest tile first).
- *body mask*: voxels above 10 % of the received volume's 99th percentile (background air is
  near zero, soft tissue well above 10 % of the hot organs). The threshold is taken from the
  received volume once and applied unchanged to every derived series, so the means compare the
  same activity range rather than each image's own notion of "body".
- *total activity*: sum of all voxels times the voxel volume (the whole field of view, negative
  noise included, so smoothing that only moves activity around changes it little).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PEAK_SPHERE_ML = 1.0
# Radius of a 1 cm³ sphere: (3 / (4 pi))^(1/3) cm = 6.204 mm.
PEAK_RADIUS_MM = 10.0 * (3.0 * PEAK_SPHERE_ML / (4.0 * math.pi)) ** (1.0 / 3.0)
PEAK_SUPERSAMPLING = 5
BODY_PERCENTILE = 99.0
BODY_FRACTION = 0.10
# The percentile is read from every 2nd voxel along each axis: 1/8 of the voxels gives the
# same value to a fraction of a percent on a PET volume, at 1/8 of the cost.
BODY_SAMPLE_STRIDE = 2
PEAK_TILE = 16  # voxels per tile edge when searching for the peak
ML_PER_MM3 = 1e-3
BQ_PER_MBQ = 1e6


@dataclass(frozen=True)
class ActivityMetrics:
    """One volume's numbers in activity concentration (Bq/ml) and total activity (MBq)."""

    max_bqml: float
    peak_bqml: float
    peak_zyx: tuple[int, int, int]
    mean_body_bqml: float | None  # None: no voxel above the body threshold
    body_ml: float
    total_mbq: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_zyx": list(self.peak_zyx)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActivityMetrics:
        z, y, x = (int(v) for v in data["peak_zyx"])
        mean = data.get("mean_body_bqml")
        return cls(
            max_bqml=float(data["max_bqml"]),
            peak_bqml=float(data["peak_bqml"]),
            peak_zyx=(z, y, x),
            mean_body_bqml=None if mean is None else float(mean),
            body_ml=float(data["body_ml"]),
            total_mbq=float(data["total_mbq"]),
        )


def _check_volume(volume: np.ndarray, spacing_zyx: Sequence[float]) -> None:
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"expected a non-empty 3-D (z, y, x) volume, got shape {volume.shape}")
    if len(spacing_zyx) != 3 or any(not math.isfinite(s) or s <= 0 for s in spacing_zyx):
        raise ValueError("voxel spacing must be three positive millimetre values")


def body_threshold(volume: np.ndarray) -> float:
    """The body mask's threshold (Bq/ml) for this received volume; see the module docstring."""
    step = BODY_SAMPLE_STRIDE
    sample = volume[::step, ::step, ::step]
    return float(BODY_FRACTION * np.percentile(sample, BODY_PERCENTILE))


@dataclass(frozen=True)
class SphereKernel:
    """Voxel offsets (n, 3) around a centre and their weights (summing to 1)."""

    offsets: np.ndarray
    weights: np.ndarray

    @property
    def half(self) -> tuple[int, int, int]:
        hz, hy, hx = (int(v) for v in np.abs(self.offsets).max(axis=0))
        return (hz, hy, hx)


# Voxels summed at a time (12 MB of float32): the scratch stays in cache-friendly bounds.
SUM_SLAB_VOXELS = 3 * 1024 * 1024


def sphere_kernel(
    spacing_zyx: Sequence[float],
    radius_mm: float = PEAK_RADIUS_MM,
    supersampling: int = PEAK_SUPERSAMPLING,
) -> SphereKernel:
    """Each voxel's share of a sphere of ``radius_mm`` centred on the middle of voxel (0, 0, 0)."""
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    half = np.ceil(radius_mm / spacing + 0.5).astype(int)
    # Sub-voxel sample points at the centres of an s x s x s grid inside each voxel.
    sub = (np.arange(supersampling) + 0.5) / supersampling - 0.5
    axes = [np.arange(-h, h + 1) for h in half]
    grids = np.meshgrid(*axes, indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    inside = np.zeros(len(offsets))
    for dz in sub:
        for dy in sub:
            for dx in sub:
                points = (offsets + np.array([dz, dy, dx])) * spacing
                inside += (points**2).sum(axis=1) <= radius_mm**2
    keep = inside > 0
    weights = inside[keep] / inside[keep].sum()
    return SphereKernel(offsets=offsets[keep], weights=weights)


def _sphere_means(
    data: np.ndarray, kernel: SphereKernel, shape: tuple[int, int, int]
) -> np.ndarray:
    """Weighted sphere means at every centre of a box; ``data`` is the box grown by the kernel."""
    hz, hy, hx = kernel.half
    out = np.zeros(shape, dtype=np.float64)
    nz, ny, nx = shape
    for (dz, dy, dx), weight in zip(kernel.offsets, kernel.weights, strict=True):
        out += weight * data[hz + dz : hz + dz + nz, hy + dy : hy + dy + ny, hx + dx : hx + dx + nx]
    return out


def _crop_padded(volume: np.ndarray, lo: np.ndarray, hi: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """``volume[lo - pad : hi + pad]``, the edge voxel repeated where that leaves the volume."""
    shape = np.array(volume.shape)
    start, stop = lo - pad, hi + pad
    inner_start, inner_stop = np.maximum(start, 0), np.minimum(stop, shape)
    crop = volume[tuple(slice(a, b) for a, b in zip(inner_start, inner_stop, strict=True))]
    before, after = inner_start - start, stop - inner_stop
    if before.any() or after.any():
        crop = np.pad(crop, list(zip(before, after, strict=True)), mode="edge")
    return crop


def sphere_peak(
    volume: np.ndarray, kernel: SphereKernel, *, hottest: int | None = None
) -> tuple[float, tuple[int, int, int]]:
    """The highest sphere mean over all voxel centres and where it is (exact; see above)."""
    shape = np.array(volume.shape)
    half = np.array(kernel.half)
    flat_hottest = int(np.argmax(volume)) if hottest is None else hottest
    hottest_at = np.array(np.unravel_index(flat_hottest, volume.shape))
    one = np.ones(3, dtype=int)
    best = float(
        _sphere_means(_crop_padded(volume, hottest_at, hottest_at + one, half), kernel, (1, 1, 1))[
            0, 0, 0
        ]
    )
    best_at = hottest_at
    # Only a sphere containing a voxel above ``best`` can beat it.
    hot = np.flatnonzero(volume > best)
    if hot.size:
        coords = np.stack(np.unravel_index(hot, volume.shape), axis=1)
        values = volume.flat[hot]
        grid = -(-shape // PEAK_TILE)
        tile_of = np.ravel_multi_index(tuple((coords // PEAK_TILE).T), tuple(grid))
        _, inverse = np.unique(tile_of, return_inverse=True)
        count = int(inverse.max()) + 1
        tile_max = np.full(count, -np.inf)
        np.maximum.at(tile_max, inverse, values)
        tile_lo = np.full((count, 3), np.iinfo(np.int64).max)
        tile_hi = np.zeros((count, 3), dtype=np.int64)
        np.minimum.at(tile_lo, inverse, coords)
        np.maximum.at(tile_hi, inverse, coords)
        for index in np.argsort(-tile_max):
            if tile_max[index] <= best:
                break  # tiles come hottest first: no later one can win either
            # Centres within the kernel's reach of this tile's hot voxels.
            lo = np.maximum(tile_lo[index] - half, 0)
            hi = np.minimum(tile_hi[index] + half + 1, shape)
            box = hi - lo
            means = _sphere_means(
                _crop_padded(volume, lo, hi, half), kernel, (int(box[0]), int(box[1]), int(box[2]))
            )
            where = int(np.argmax(means))
            if means.reshape(-1)[where] > best:
                best = float(means.reshape(-1)[where])
                best_at = lo + np.array(np.unravel_index(where, means.shape))
    z, y, x = (int(v) for v in best_at)
    return best, (z, y, x)


def measure(
    volume: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    body_threshold_bqml: float,
    kernel: SphereKernel | None = None,
) -> ActivityMetrics:
    """The metrics of one volume in Bq/ml; never writes to ``volume`` (it may be read-only)."""
    _check_volume(volume, spacing_zyx)
    voxel_ml = float(np.prod(spacing_zyx)) * ML_PER_MM3
    kernel = kernel or sphere_kernel(spacing_zyx)
    # One pass finds the hottest voxel for both the maximum and the peak's first guess.
    hottest = int(np.argmax(volume))
    peak, peak_at = sphere_peak(volume, kernel, hottest=hottest)
    count, body_sum, total = _sums(volume, np.float32(body_threshold_bqml))
    return ActivityMetrics(
        max_bqml=float(volume.flat[hottest]),
        peak_bqml=peak,
        peak_zyx=peak_at,
        mean_body_bqml=body_sum / count if count else None,
        body_ml=count * voxel_ml,
        total_mbq=total * voxel_ml / BQ_PER_MBQ,
    )


def _sums(volume: np.ndarray, threshold: np.float32) -> tuple[int, float, float]:
    """Voxels above ``threshold``, their sum and the whole volume's sum, in one pass of slabs
    (a whole-volume mask and a masked sum cost twice the time and a volume-sized mask)."""
    count, body_sum, total = 0, 0.0, 0.0
    plane = volume.shape[1] * volume.shape[2]
    step = max(1, SUM_SLAB_VOXELS // max(plane, 1))
    scratch = np.empty((min(step, volume.shape[0]), *volume.shape[1:]), dtype=np.float32)
    for start in range(0, volume.shape[0], step):
        slab = volume[start : start + step]
        above = slab > threshold
        count += int(np.count_nonzero(above))
        kept = scratch[: len(slab)]
        np.multiply(slab, above, out=kept)  # the voxels at or below the threshold become 0
        part = float(kept.sum(dtype=np.float64))
        if not math.isfinite(part):  # NaN x 0 is NaN: only the masked sum leaves those out
            part = float(np.sum(slab, where=above, dtype=np.float64))
        body_sum += part
        total += float(slab.sum(dtype=np.float64))
    return count, body_sum, total


# --- SUV and the report -------------------------------------------------------------------


def suv_values(metrics: ActivityMetrics, factor: float | None) -> dict[str, float | None]:
    """SUVmax, SUVpeak and SUVmean (g/ml), or nulls without a factor."""

    def scaled(value: float | None) -> float | None:
        return None if factor is None or value is None else value * factor

    return {
        "suv_max": scaled(metrics.max_bqml),
        "suv_peak": scaled(metrics.peak_bqml),
        "suv_mean": scaled(metrics.mean_body_bqml),
    }


def report(metrics: ActivityMetrics, factor: float | None) -> dict[str, Any]:
    """One volume's row of the quantitative table, JSON-ready."""
    return {**metrics.as_dict(), **suv_values(metrics, factor)}


# Metric name in a report -> what a person calls it.
COMPARED: dict[str, str] = {
    "max_bqml": "maximum activity concentration",
    "peak_bqml": "peak activity concentration",
    "mean_body_bqml": "mean activity concentration in the body",
    "total_mbq": "total activity",
}


def percent_change(received: float | None, derived: float | None) -> float | None:
    """(derived - received) / |received| in percent; None when either is missing or zero."""
    if received is None or derived is None or received == 0:
        return None
    return (derived - received) / abs(received) * 100.0


def changes(received: ActivityMetrics, derived: ActivityMetrics) -> dict[str, float | None]:
    """Relative change of each metric; SUV changes equal these (one factor for both)."""
    before, after = received.as_dict(), derived.as_dict()
    return {name: percent_change(before[name], after[name]) for name in COMPARED}


@dataclass(frozen=True)
class QuantThresholds:
    """The site's alarm: percent change against the received volume; None turns one off."""

    max_activity_change_pct: float | None = None
    max_suvmax_change_pct: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive percentage or off, not {value}")

    @property
    def off(self) -> bool:
        return self.max_activity_change_pct is None and self.max_suvmax_change_pct is None


@dataclass(frozen=True)
class Breach:
    series: str  # which derived series, as the task page names it
    metric: str  # "total activity" or "SUVmax"
    change_pct: float
    limit_pct: float

    @property
    def text(self) -> str:
        return (
            f"{self.series}: {self.metric} changed by {self.change_pct:+.1f} % "
            f"(limit {self.limit_pct:g} %)"
        )


def evaluate(
    received: ActivityMetrics,
    derived: Mapping[str, ActivityMetrics],
    thresholds: QuantThresholds,
    *,
    suv: bool,
) -> list[Breach]:
    """Every alarm the derived series trip, in series order.

    The SUVmax limit is checked on the maximum concentration when there is no SUV: the relative
    change is the same number, and a missing weight must not switch the alarm off. It is named
    after what the reader sees (SUVmax, or the maximum activity concentration without SUV).
    """
    max_name = "SUVmax" if suv else "maximum activity concentration"
    rules = (
        ("total_mbq", "total activity", thresholds.max_activity_change_pct),
        ("max_bqml", max_name, thresholds.max_suvmax_change_pct),
    )
    breaches: list[Breach] = []
    for series, metrics in derived.items():
        change = changes(received, metrics)
        for key, metric, limit in rules:
            value = change[key]
            if limit is not None and value is not None and abs(value) > limit:
                breaches.append(Breach(series, metric, value, limit))
    return breaches
