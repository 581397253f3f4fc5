"""Maximum-intensity projections: geometry, ordering and the PNG produced."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petray.demo.synth import make_pet_series, write_series
from petray.imaging import mip


def test_png_has_the_expected_size_and_shows_the_hot_spot() -> None:
    voxels = np.zeros((40, 64, 80), np.float32)
    voxels[30, 20:30, 10] = 1000.0  # a hot line near the head end, left side
    volume = mip.Volume(voxels, spacing_zyx=(4.0, 2.0, 2.0))
    png = mip.render_mip_png(volume, height=200)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    # Coronal: rows are z (40 x 4 mm = 160 mm), columns are x (80 x 2 mm = 160 mm).
    assert image.size == mip.mip_size(voxels.shape, volume.spacing_zyx, height=200) == (200, 200)
    pixels = np.asarray(image)
    # Inverted grey scale: the hot spot is dark, in the upper quarter (head at the top).
    dark_rows = np.nonzero(pixels.min(axis=1) < 64)[0]
    assert dark_rows.size and dark_rows.max() < 200 // 4
    assert pixels[-1].min() == 255  # the feet end is empty


def test_project_rejects_non_volumes() -> None:
    with pytest.raises(ValueError):
        mip.project(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        mip.mip_size((0, 4, 4), (1, 1, 1))


def test_load_volume_orders_slices_by_position_not_file_order(tmp_path: Path) -> None:
    datasets = make_pet_series(slices=12, rows=32, cols=32, seed=3)
    paths = write_series(datasets, tmp_path)
    ordered = mip.load_volume(paths)
    shuffled = list(paths)
    random.Random(1).shuffle(shuffled)
    again = mip.load_volume(shuffled)
    assert ordered.voxels.shape == (12, 32, 32)
    np.testing.assert_array_equal(ordered.voxels, again.voxels)
    assert ordered.spacing_zyx[0] == pytest.approx(3.0)
    # Real-world values: the rescale slope was applied (activity is far above int16 codes).
    assert float(ordered.voxels.max()) > 0
    png = mip.render_mip_png(ordered, height=120)
    assert Image.open(io.BytesIO(png)).size[1] == 120


def test_series_files_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert mip.series_files(tmp_path / "gone") == []
