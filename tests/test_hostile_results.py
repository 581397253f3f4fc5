"""Hostile result archives (issue 9): the wrong task's result, absurd finite values."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from petray.archive import (
    DENOISED_NAME,
    METADATA_NAME,
    NOISE_NAME,
    peak_magnitude,
    read_result_archive,
)
from petray.errors import ArchiveRejected

SHAPE = (8, 10, 12)
TASK_ID = "0123456789abcdef0123456789abcdef"
OTHER_TASK_ID = "fedcba9876543210fedcba9876543210"
LIMIT = 10 * 2**20
FACTOR = 100.0


def volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 300.0, size=SHAPE).astype(np.float32)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def result_zip(
    path: Path,
    denoised: np.ndarray,
    *,
    metadata: dict[str, object] | None = None,
    noise: np.ndarray | None = None,
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(DENOISED_NAME, npy(denoised))
        if noise is not None:
            zf.writestr(NOISE_NAME, npy(noise))
        if metadata is not None:
            zf.writestr(METADATA_NAME, json.dumps(metadata))
    return path


def read(path: Path, *, input_peak: float | None) -> np.ndarray:
    return read_result_archive(
        path,
        expected_shape=SHAPE,
        max_uncompressed_bytes=LIMIT,
        expected_task_id=TASK_ID,
        input_peak=input_peak,
        max_factor=FACTOR,
    ).denoised


def test_peak_magnitude_counts_negative_values() -> None:
    data = volume()
    data[3, 4, 5] = -1e6
    assert peak_magnitude(data) == 1e6
    assert peak_magnitude(np.zeros((2, 3, 3), np.float32)) == 0.0


@pytest.mark.parametrize(
    "named",
    [OTHER_TASK_ID, "", 42, None, TASK_ID[:-1]],
    ids=["other-task", "empty", "number", "null", "prefix"],
)
def test_metadata_naming_another_task_is_refused(tmp_path: Path, named: object) -> None:
    path = result_zip(tmp_path / "r.zip", volume(), metadata={"task_id": named})
    with pytest.raises(ArchiveRejected, match=r"names task .* not 0123456789abcdef") as caught:
        read(path, input_peak=None)
    assert "the result of another task" in str(caught.value)


def test_metadata_naming_this_task_or_no_task_is_accepted(tmp_path: Path) -> None:
    data = volume()
    named = result_zip(tmp_path / "a.zip", data, metadata={"task_id": TASK_ID.upper()})
    unnamed = result_zip(tmp_path / "b.zip", data, metadata={"algorithm": "x"})
    bare = result_zip(tmp_path / "c.zip", data)
    for path in (named, unnamed, bare):
        assert np.array_equal(read(path, input_peak=peak_magnitude(data)), data)


@pytest.mark.parametrize(
    ("value", "slice_index"),
    [(3e38, 4), (-3e38, 5), (1e7, 0), (-2e6, 7)],
    ids=["+3e38", "-3e38", "1e7", "negative-2e6"],
)
def test_one_absurd_value_is_refused_naming_slice_and_value(
    tmp_path: Path, value: float, slice_index: int
) -> None:
    data = volume()
    peak = peak_magnitude(data)  # about 4e3: the bound is 4e5
    data[slice_index, 2, 3] = value
    path = result_zip(tmp_path / "r.zip", data, metadata={"task_id": TASK_ID})
    with pytest.raises(ArchiveRejected) as caught:
        read(path, input_peak=peak)
    message = str(caught.value)
    assert f"{DENOISED_NAME}: value {value:.3g} in slice {slice_index} is implausible" in message
    assert f"beyond {FACTOR:g} x the input's peak" in message


def test_absurd_noise_is_refused_too(tmp_path: Path) -> None:
    data = volume()
    noise = np.zeros(SHAPE, np.float32)
    noise[1, 0, 0] = 1e30
    path = result_zip(tmp_path / "r.zip", data, noise=noise)
    with pytest.raises(ArchiveRejected, match=f"{NOISE_NAME}: value 1e\\+30 in slice 1"):
        read(path, input_peak=peak_magnitude(data))


def test_values_within_the_factor_are_accepted(tmp_path: Path) -> None:
    data = volume()
    peak = peak_magnitude(data)
    data[0, 0, 0] = FACTOR * peak * 0.99  # a strong but possible hot spot
    data[1, 0, 0] = -peak  # undershoot near an edge
    path = result_zip(tmp_path / "r.zip", data)
    assert np.array_equal(read(path, input_peak=peak), data)


def test_without_an_input_peak_the_bound_is_not_applied(tmp_path: Path) -> None:
    # Tasks packed before the peak was recorded: only NaN/inf are refused, as before.
    data = volume()
    data[0, 0, 0] = 3e38
    path = result_zip(tmp_path / "r.zip", data)
    assert read(path, input_peak=None)[0, 0, 0] == np.float32(3e38)
