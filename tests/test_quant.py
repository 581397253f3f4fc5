"""petray.imaging.quant (issue 15): metrics on analytic volumes, relative changes, the alarm
rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from petray.imaging import quant
from petray.imaging.quant import (
    PEAK_RADIUS_MM,
    ActivityMetrics,
    QuantThresholds,
    body_threshold,
    changes,
    evaluate,
    measure,
    percent_change,
    report,
    sphere_kernel,
    sphere_peak,
)

SPACING = (2.0, 2.0, 2.0)


def ball(shape: tuple[int, int, int], centre_zyx: tuple[float, float, float], radius_mm: float):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    dz, dy, dx = ((c - o) * s for c, o, s in zip((z, y, x), centre_zyx, SPACING, strict=True))
    return dz**2 + dy**2 + dx**2 <= radius_mm**2


def test_peak_radius_is_that_of_a_one_millilitre_sphere() -> None:
    assert 4 / 3 * math.pi * (PEAK_RADIUS_MM / 10) ** 3 == pytest.approx(1.0)
    assert abs(PEAK_RADIUS_MM - 6.2) < 0.01


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.27, 1.6, 1.6), (5.0, 4.0, 4.0)])
def test_sphere_kernel_weights_cover_one_millilitre(spacing: tuple[float, float, float]) -> None:
    kernel = sphere_kernel(spacing)
    assert kernel.weights.sum() == pytest.approx(1.0)
    # The central voxel lies wholly inside: its weight is its share of the 1 ml.
    voxel_ml = float(np.prod(spacing)) / 1000
    central = kernel.weights[np.all(kernel.offsets == 0, axis=1)][0]
    assert central == pytest.approx(voxel_ml / 1.0, rel=0.05)


def test_uniform_sphere_metrics_are_the_known_values() -> None:
    shape = (40, 50, 50)
    value = 5000.0  # Bq/ml
    inside = ball(shape, (20, 25, 25), 20.0)
    volume = np.where(inside, np.float32(value), np.float32(0))
    volume.setflags(write=False)  # read-only, as from the object store
    metrics = measure(volume, SPACING, body_threshold_bqml=body_threshold(volume))
    voxel_ml = 8.0 / 1000
    assert metrics.max_bqml == value
    # A 1 ml sphere fits well inside the 20 mm one: the peak is the sphere's value.
    assert metrics.peak_bqml == pytest.approx(value)
    assert metrics.total_mbq == pytest.approx(value * inside.sum() * voxel_ml / 1e6)
    assert metrics.mean_body_bqml == pytest.approx(value)
    assert metrics.body_ml == pytest.approx(inside.sum() * voxel_ml)
    assert inside[metrics.peak_zyx]


def test_peak_is_the_hot_lesion_not_a_hotter_single_voxel() -> None:
    """SUVpeak finds the 1 ml region of highest mean; a lone spike raises only SUVmax."""
    shape = (40, 60, 60)
    volume = np.full(shape, 1000.0, dtype=np.float32)
    volume[ball(shape, (20, 20, 40), 12.0)] = 8000.0  # lesion, larger than the 1 ml sphere
    volume[10, 50, 10] = 30000.0  # one hot voxel (noise)
    metrics = measure(volume, SPACING, body_threshold_bqml=100.0)
    assert metrics.max_bqml == 30000.0
    assert metrics.peak_bqml == pytest.approx(8000.0)
    assert np.linalg.norm(np.subtract(metrics.peak_zyx, (20, 20, 40))) * 2.0 <= 12.0 - 6.2


def test_search_is_exact_against_a_full_convolution() -> None:
    rng = np.random.default_rng(3)
    volume = ndimage.gaussian_filter(rng.gamma(2.0, 500.0, size=(30, 36, 40)), 1.2)
    volume = volume.astype(np.float32)
    kernel = sphere_kernel((2.5, 2.0, 2.0))
    peak, at = sphere_peak(volume, kernel)
    dense = np.zeros(volume.shape)
    footprint_shape = tuple(2 * h + 1 for h in kernel.half)
    weights = np.zeros(footprint_shape)
    for offset, w in zip(kernel.offsets, kernel.weights, strict=True):
        weights[tuple(offset + np.array(kernel.half))] = w
    dense = ndimage.correlate(volume.astype(np.float64), weights, mode="nearest")
    assert peak == pytest.approx(dense.max(), rel=1e-9)
    assert dense[at] == pytest.approx(dense.max(), rel=1e-9)


def test_gaussian_smoothing_keeps_total_activity_and_lowers_the_maximum() -> None:
    shape = (40, 50, 50)
    volume = np.where(ball(shape, (20, 25, 25), 8.0), 9000.0, 500.0).astype(np.float32)
    threshold = body_threshold(volume)
    received = measure(volume, SPACING, body_threshold_bqml=threshold)
    smoothed = ndimage.gaussian_filter(volume, 3.0, mode="nearest")
    derived = measure(smoothed, SPACING, body_threshold_bqml=threshold)
    change = changes(received, derived)
    assert abs(change["total_mbq"] or 0) < 0.5
    assert (change["max_bqml"] or 0) < -10
    halved = measure(volume * np.float32(0.5), SPACING, body_threshold_bqml=threshold)
    assert changes(received, halved)["total_mbq"] == pytest.approx(-50.0)
    assert changes(received, halved)["peak_bqml"] == pytest.approx(-50.0)


def test_body_threshold_ignores_air_noise() -> None:
    rng = np.random.default_rng(0)
    shape = (20, 60, 60)
    volume = rng.normal(0, 30, size=shape).astype(np.float32)
    inside = ball(shape, (10, 30, 30), 40.0)
    volume[inside] += 3000
    threshold = body_threshold(volume)
    assert 150 < threshold < 400
    metrics = measure(volume, SPACING, body_threshold_bqml=threshold)
    assert metrics.body_ml == pytest.approx(inside.sum() * 0.008, rel=0.02)


def test_suv_fields_scale_by_the_factor_or_are_null() -> None:
    metrics = ActivityMetrics(10000.0, 8000.0, (1, 2, 3), 2000.0, 5000.0, 300.0)
    with_suv = report(metrics, 0.001)
    assert with_suv["suv_max"] == pytest.approx(10.0)
    assert with_suv["suv_peak"] == pytest.approx(8.0)
    assert with_suv["suv_mean"] == pytest.approx(2.0)
    without = report(metrics, None)
    assert without["suv_max"] is None and without["suv_peak"] is None
    assert without["max_bqml"] == 10000.0
    assert ActivityMetrics.from_dict(without) == metrics


def test_percent_change() -> None:
    assert percent_change(100.0, 107.2) == pytest.approx(7.2)
    assert percent_change(100.0, 80.0) == pytest.approx(-20.0)
    assert percent_change(0.0, 5.0) is None
    assert percent_change(None, 5.0) is None


def metrics(total: float, maximum: float) -> ActivityMetrics:
    return ActivityMetrics(maximum, maximum * 0.9, (0, 0, 0), 1000.0, 100.0, total)


def test_alarm_names_each_breach_with_its_limit() -> None:
    received = metrics(total=100.0, maximum=10000.0)
    derived = {
        "#1001 Denoised": metrics(total=107.2, maximum=10500.0),
        "#1002 Smooth": metrics(total=101.0, maximum=6000.0),
    }
    thresholds = QuantThresholds(max_activity_change_pct=5, max_suvmax_change_pct=30)
    breaches = evaluate(received, derived, thresholds, suv=True)
    assert [b.text for b in breaches] == [
        "#1001 Denoised: total activity changed by +7.2 % (limit 5 %)",
        "#1002 Smooth: SUVmax changed by -40.0 % (limit 30 %)",
    ]


def test_alarm_off_holds_nothing_and_missing_weight_keeps_the_max_rule() -> None:
    received = metrics(total=100.0, maximum=10000.0)
    derived = {"#1": metrics(total=150.0, maximum=1000.0)}
    assert evaluate(received, derived, QuantThresholds(), suv=True) == []
    assert QuantThresholds().off
    only_max = QuantThresholds(max_suvmax_change_pct=30)
    [breach] = evaluate(received, derived, only_max, suv=False)
    assert breach.metric == "maximum activity concentration"
    within = {"#1": metrics(total=104.9, maximum=12900.0)}
    both = QuantThresholds(5, 30)
    assert evaluate(received, within, both, suv=True) == []


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
def test_thresholds_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        QuantThresholds(max_activity_change_pct=bad)


def test_refuses_what_is_not_a_volume() -> None:
    with pytest.raises(ValueError, match="3-D"):
        measure(np.zeros((4, 4), np.float32), SPACING, body_threshold_bqml=0)
    with pytest.raises(ValueError, match="spacing"):
        measure(np.zeros((2, 2, 2), np.float32), (0, 1, 1), body_threshold_bqml=0)


def test_the_body_sums_in_slabs_are_the_masked_sums_of_the_whole_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quant, "SUM_SLAB_VOXELS", 3 * 30 * 20)  # 15 slabs of 3 slices
    rng = np.random.default_rng(5)
    volume = rng.normal(100.0, 60.0, size=(45, 30, 20)).astype(np.float32)
    volume[7, 3, 4] = np.nan  # below any threshold as far as the mask goes: left out
    threshold = np.float32(120.0)
    mask = volume > threshold
    count, body, total = quant._sums(volume, threshold)
    assert count == int(np.count_nonzero(mask))
    assert body == pytest.approx(float(np.sum(volume, where=mask, dtype=np.float64)), rel=1e-12)
    assert np.isnan(total)
    volume[7, 3, 4] = 0.0
    assert quant._sums(volume, threshold)[2] == pytest.approx(float(volume.sum(dtype=np.float64)))
