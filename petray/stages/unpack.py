"""The Unpacking stage's work (issue 14): check the result, filter it, make the derived series.

Pure over arrays and files: the UnpackerActor fans the per-filter part (``filter_series``) out
to FilterWorkers with the volume zero-copy in the object store, and each worker calls it; the
rest runs on the gateway. No database and no Ray here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petray.imaging.derive import (
    EncodedSeries,
    SeriesJob,
    SliceTemplate,
    encode_series,
    prepare_templates,
    write_encoded,
    write_series,
)
from petray.imaging.filters import FilterSpec, apply_post_filter
from petray.imaging.quant import ActivityMetrics, QuantThresholds, measure
from petray.service.archive import ResultArrays, read_result_archive
from petray.stages.records import Packed, Quant
from petray.stages.review import judge


@dataclass(frozen=True)
class FilteredSeries:
    """A finished filter job: the files' count (or the encoded files) and the volume's metrics."""

    series: int | EncodedSeries
    metrics: ActivityMetrics | None = None


class PreparedTemplates:
    """Derived slices' templates made ahead of the result, while the service works (issue 13).

    ``prepare`` parses a task's source headers in a background thread; ``take`` hands them
    over when the result comes (waiting if the work is still under way). Keyed by the task and
    its packed slices, so a task packed again never gets stale templates; at most ``limit``
    tasks are kept (the oldest go first), a few MB each.
    """

    def __init__(self, limit: int = 32) -> None:
        self._limit = limit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petray-templates")
        self._made: OrderedDict[tuple[str, tuple[str, ...]], Future[tuple[SliceTemplate, ...]]]
        self._made = OrderedDict()

    def prepare(self, task_id: str, slice_paths: Sequence[str]) -> None:
        key = (task_id, tuple(slice_paths))
        if key in self._made:
            return
        self._made[key] = self._pool.submit(prepare_templates, [Path(p) for p in slice_paths])
        while len(self._made) > self._limit:
            self._made.popitem(last=False)[1].cancel()

    def take(self, task_id: str, slice_paths: Sequence[str]) -> tuple[SliceTemplate, ...] | None:
        """The prepared templates, or None (never prepared, evicted or failed: make them anew,
        and the failure is reported there)."""
        made = self._made.pop((task_id, tuple(slice_paths)), None)
        if made is None or made.cancelled():
            return None
        try:
            return made.result()
        except Exception:
            return None


def open_result(
    result_archive: Path,
    packed: Packed,
    *,
    task_id: str,
    max_uncompressed_bytes: int,
    max_factor: float,
    templates: tuple[SliceTemplate, ...] | None = None,
    keep: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> tuple[ResultArrays, tuple[SliceTemplate, ...]]:
    """The service's result, checked against what was packed, and the derived slices' templates
    (``templates`` when they were prepared ahead). ``keep``: as ``read_result_archive``'s.

    Otherwise the source headers are parsed (pure Python) while the archive is unzipped and
    hashed (C code that releases the GIL): the two overlap in this process.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        made = (
            None
            if templates is not None
            else pool.submit(prepare_templates, [Path(p) for p in packed.slice_paths])
        )
        result = read_result_archive(
            result_archive,
            expected_shape=packed.shape,
            max_uncompressed_bytes=max_uncompressed_bytes,
            expected_task_id=task_id,
            input_peak=packed.input_peak,
            max_factor=max_factor,
            keep=keep,
        )
        if made is not None:
            templates = made.result()
        assert templates is not None
        return result, templates


def filter_series(
    denoised: np.ndarray,
    noise: np.ndarray | None,
    templates: Sequence[SliceTemplate],
    spec: FilterSpec,
    spacing_zyx: Sequence[float],
    job: SeriesJob,
    *,
    write: bool,
    body_threshold_bqml: float | None = None,
    done_with: Callable[[np.ndarray], object] | None = None,
) -> FilteredSeries:
    """Filter the volume with ``spec`` and make ``job``'s series: written (``write``; returns
    the file count) or encoded for the gateway to write. With ``body_threshold_bqml``, also the
    filtered volume's quantitative metrics (issue 15), measured where the volume is.
    ``done_with``: as ``apply_post_filter``'s."""
    # ``denoised`` may be a read-only view of the object store's copy: never written to.
    filtered = apply_post_filter(denoised, noise, spec, spacing_zyx, done_with=done_with)
    metrics = None
    if body_threshold_bqml is not None:
        metrics = measure(filtered, spacing_zyx, body_threshold_bqml=body_threshold_bqml)
    if write:
        return FilteredSeries(len(write_series(filtered, templates, job)), metrics)
    return FilteredSeries(encode_series(filtered, templates, job), metrics)


def written(result: FilteredSeries, job: SeriesJob) -> int:
    """The file count of a finished job, writing the series a worker elsewhere encoded."""
    if isinstance(result.series, EncodedSeries):
        return len(write_encoded(result.series, job.outdir))
    return int(result.series)


def judged(
    quant: Quant | None,
    specs: Sequence[FilterSpec],
    measured: dict[int, ActivityMetrics],
    thresholds: QuantThresholds,
) -> Quant | None:
    """The quantitative check's record with every derived series and the verdict; None when the
    task has no reference (packed before issue 15) or a filter's metrics are missing."""
    if quant is None or len(measured) != len(specs):
        return None
    derived = [
        (f"#{spec.series_number} {spec.description}", spec.series_number, measured[i])
        for i, spec in enumerate(specs)
    ]
    return judge(quant, derived, thresholds)
