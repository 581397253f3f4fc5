"""Checks that the series delivered to a destination are what petray should have produced."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from petray.imaging.filters import FilterSpec, apply_post_filter
from petray.imaging.volume import slice_normal


@dataclass(frozen=True)
class DestinationSeries:
    series_instance_uid: str
    series_number: int
    datasets: tuple[Dataset, ...]


def group_by_series(datasets: Iterable[Dataset]) -> list[DestinationSeries]:
    groups: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        groups[str(ds.SeriesInstanceUID)].append(ds)
    return sorted(
        (
            DestinationSeries(uid, int(items[0].SeriesNumber), tuple(items))
            for uid, items in groups.items()
        ),
        key=lambda s: s.series_number,
    )


def stored_volume(datasets: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """Values in Bq/ml ordered along the slice normal, and each slice's quantisation step."""
    normal = slice_normal([float(v) for v in datasets[0].ImageOrientationPatient])
    ordered = sorted(
        datasets, key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient]))
    )
    slopes = np.array([float(d.RescaleSlope) for d in ordered])
    planes = [
        d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        for d in ordered
    ]
    return np.stack(planes), slopes


def verify_outputs(
    received: Sequence[DestinationSeries],
    *,
    source: Sequence[Dataset],
    denoised: np.ndarray,
    noise: np.ndarray | None,
    filters: Sequence[FilterSpec],
    spacing_zyx: tuple[float, ...],
) -> list[str]:
    """Every problem found, in plain words; an empty list means the outputs are right."""
    problems: list[str] = []
    by_number = {s.series_number: s for s in received}
    source_series = {str(ds.SeriesInstanceUID) for ds in source}
    first = source[0]
    if len(received) != len(filters):
        problems.append(f"expected {len(filters)} output series, found {len(received)}")
    for spec in filters:
        series = by_number.get(spec.series_number)
        if series is None:
            problems.append(f"no series number {spec.series_number} ({spec.description})")
            continue
        if len(series.datasets) != len(source):
            problems.append(
                f"series {spec.series_number}: {len(series.datasets)} instances, "
                f"expected {len(source)}"
            )
            continue
        if series.series_instance_uid in source_series:
            problems.append(f"series {spec.series_number} reuses the source SeriesInstanceUID")
        for ds in series.datasets[:1]:
            for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
                if str(ds.get(keyword, "")) != str(first.get(keyword, "")):
                    problems.append(f"series {spec.series_number}: {keyword} differs from source")
        values, slopes = stored_volume(series.datasets)
        expected = apply_post_filter(denoised, noise, spec, spacing_zyx)
        error = np.abs(values - expected).max(axis=(1, 2))
        # int16 quantisation: at most half a step per slice (plus float32 rounding).
        tolerance = slopes * 0.5 + np.abs(expected).max(axis=(1, 2)) * 1e-6 + 1e-6
        if np.any(error > tolerance):
            worst = int(np.argmax(error / tolerance))
            problems.append(
                f"series {spec.series_number}: slice {worst} differs from the expected values by "
                f"{error[worst]:.4g} Bq/ml (allowed {tolerance[worst]:.4g})"
            )
    return problems
