from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from petray.imaging.filters import (
    LO_MAX_LENGTH,
    FilterSpec,
    apply_post_filter,
    fwhm_to_sigma_voxels,
    series_description,
)


def _volume(shape: tuple[int, int, int] = (12, 20, 18), seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 500.0, size=shape).astype(np.float32)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _spec(**overrides: object) -> FilterSpec:
    values: dict[str, object] = {
        "id": 1,
        "description": "G4",
        "series_number": 1001,
        "fwhm_mm": 4.0,
        "noise_pct": 0.0,
        "mode": "append",
    }
    values.update(overrides)
    return FilterSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", ""),
        ("description", "x" * (LO_MAX_LENGTH + 1)),
        ("description", "a\\b"),
        ("series_number", -1),
        ("series_number", 2**31),
        ("series_number", 1.5),
        ("fwhm_mm", -0.1),
        ("fwhm_mm", math.nan),
        ("noise_pct", -1.0),
        ("noise_pct", 100.5),
        ("mode", "prepend"),
    ],
)
def test_filter_spec_rejects_invalid_values(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        _spec(**{field: value})


def test_filter_spec_accepts_bounds() -> None:
    spec = _spec(fwhm_mm=0.0, noise_pct=100.0, mode="replace", id=None)
    assert not spec.smooths
    assert spec.noise_pct == 100.0


def test_sigma_per_axis_uses_that_axis_spacing() -> None:
    fwhm = 6.0
    sigma = fwhm_to_sigma_voxels(fwhm, (3.0, 2.0, 4.0))
    sigma_mm = fwhm / (2 * math.sqrt(2 * math.log(2)))
    assert sigma == pytest.approx((sigma_mm / 3.0, sigma_mm / 2.0, sigma_mm / 4.0))
    # The FWHM of a Gaussian is ~2.3548 sigma.
    assert fwhm / (sigma[1] * 2.0) == pytest.approx(2.35482, rel=1e-5)


@pytest.mark.parametrize("spacing", [(0.0, 2.0, 2.0), (2.0, -1.0, 2.0), (2.0, 2.0)])
def test_sigma_rejects_bad_spacing(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        fwhm_to_sigma_voxels(4.0, spacing)


def test_gaussian_matches_scipy_on_anisotropic_grid() -> None:
    denoised = _read_only(_volume())
    spacing = (3.27, 2.0, 4.07)
    out = apply_post_filter(denoised, None, _spec(fwhm_mm=5.0), spacing)
    expected = ndimage.gaussian_filter(
        denoised.astype(np.float32),
        sigma=fwhm_to_sigma_voxels(5.0, spacing),
        mode="nearest",
        output=np.float32,
    )
    assert out.dtype == np.float32
    assert out.shape == denoised.shape
    np.testing.assert_array_equal(out, expected)
    # Smoothing really happened and kept the mean (Gaussian with "nearest" edges, roughly).
    assert out.std() < denoised.std() * 0.7
    assert out.mean() == pytest.approx(denoised.mean(), rel=0.02)


def test_noise_blend_before_smoothing_matches_scipy() -> None:
    denoised = _read_only(_volume(seed=1))
    noise = _read_only(_volume(seed=2) - 1000.0)
    spacing = (2.0, 2.5, 2.5)
    spec = _spec(fwhm_mm=3.0, noise_pct=25.0)
    out = apply_post_filter(denoised, noise, spec, spacing)
    blended = denoised + np.float32(0.25) * noise
    expected = ndimage.gaussian_filter(
        blended, sigma=fwhm_to_sigma_voxels(3.0, spacing), mode="nearest", output=np.float32
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-3)


def test_zero_fwhm_returns_blend_only_and_new_array() -> None:
    denoised = _read_only(_volume())
    noise = _read_only(np.ones_like(denoised))
    out = apply_post_filter(denoised, noise, _spec(fwhm_mm=0.0, noise_pct=50.0), (2, 2, 2))
    np.testing.assert_allclose(out, denoised + 0.5, rtol=1e-6)
    out_plain = apply_post_filter(denoised, None, _spec(fwhm_mm=0.0), (2, 2, 2))
    np.testing.assert_array_equal(out_plain, denoised)
    assert out_plain.flags.writeable
    assert not np.shares_memory(out_plain, denoised)


def test_read_only_inputs_are_not_modified() -> None:
    denoised = _volume()
    noise = _volume(seed=9)
    before_d, before_n = denoised.copy(), noise.copy()
    out = apply_post_filter(
        _read_only(denoised), _read_only(noise), _spec(noise_pct=40.0), (2.0, 2.0, 2.0)
    )
    np.testing.assert_array_equal(denoised, before_d)
    np.testing.assert_array_equal(noise, before_n)
    assert not np.shares_memory(out, denoised)
    assert not np.shares_memory(out, noise)


def test_noise_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="noise shape"):
        apply_post_filter(
            _volume(), np.zeros((2, 2, 2), np.float32), _spec(noise_pct=10), (1, 1, 1)
        )


def test_series_description_modes_and_length() -> None:
    assert series_description("PET WB AC", _spec(description="Gauss 4mm")) == "PET WB AC Gauss 4mm"
    assert series_description("", _spec(description="Gauss 4mm")) == "Gauss 4mm"
    replace = _spec(description="Denoised", mode="replace")
    assert series_description("PET WB AC", replace) == "Denoised"
    long = series_description("P" * 70, _spec(description="Gauss 4mm"))
    assert len(long) <= LO_MAX_LENGTH
    assert long.endswith(" Gauss 4mm")
