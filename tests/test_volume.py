from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid

from petray.errors import PermanentError
from petray.imaging.volume import _reorder_planes, load_series_volume, slice_normal
from tests.support.peers import make_pet_dataset

ROWS, COLS = 6, 7
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _pixels(index: int) -> np.ndarray:
    """Slice ``index`` carries its own index in every pixel (plus a ramp), so order is visible."""
    ramp = np.arange(ROWS * COLS, dtype=np.int32).reshape(ROWS, COLS)
    return (ramp + 100 * index).astype(np.uint16)


def _write_series(
    directory: Path,
    count: int = 6,
    *,
    orientation: tuple[float, ...] = AXIAL,
    step: float = 3.0,
    slopes: Callable[[int], tuple[float, float]] = lambda i: (1.0, 0.0),
    tweak: Callable[[int, Dataset], None] | None = None,
    shuffle_seed: int | None = 7,
) -> list[Path]:
    """Slices at ``index * step`` along the normal, InstanceNumbers lying (reversed), shuffled."""
    directory.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    normal = slice_normal(orientation)
    origin = np.array([-10.0, 5.0, 40.0])
    paths = []
    for index in range(count):
        ds = make_pet_dataset(
            index, count=count, study_uid=study, series_uid=series, frame_uid=frame,
            rows=ROWS, cols=COLS,
        )  # fmt: skip
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [float(v) for v in origin + normal * step * index]
        ds.PixelSpacing = [2.5, 4.0]
        ds.InstanceNumber = count - index  # lies: geometry decides the order
        slope, intercept = slopes(index)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = _pixels(index).astype("<u2").tobytes()
        if tweak:
            tweak(index, ds)
        path = directory / f"file{random.Random(index).randint(0, 10**9)}_{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(paths)
    return paths


def _index_of(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def test_shuffled_files_are_ordered_by_position_not_instance_number(tmp_path: Path) -> None:
    paths = _write_series(tmp_path, 6)
    assert [_index_of(p) for p in paths] != list(range(6))  # really shuffled
    volume = load_series_volume(paths)
    assert volume.data.dtype == np.float32
    assert volume.data.flags.c_contiguous
    assert volume.shape == (6, ROWS, COLS)
    assert [_index_of(p) for p in volume.slice_paths] == list(range(6))
    for z in range(6):
        np.testing.assert_array_equal(volume.data[z], _pixels(z).astype(np.float32))
    assert volume.spacing_zyx == pytest.approx((3.0, 2.5, 4.0))
    assert volume.orientation == AXIAL
    assert volume.positions.shape == (6, 3)
    np.testing.assert_allclose(np.diff(volume.positions[:, 2]), 3.0)


@pytest.mark.parametrize(
    "orientation",
    [
        AXIAL,
        (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # normal points to the feet: z runs the other way
        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
        (1.0, 0.0, 0.0, 0.0, 0.8, -0.6),  # oblique
    ],
)
def test_both_slice_directions_and_oblique(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    paths = _write_series(tmp_path, 5, orientation=orientation, step=2.0)
    volume = load_series_volume(paths)
    normal = slice_normal(orientation)
    along = volume.positions @ normal
    assert (np.diff(along) > 0).all()
    assert [_index_of(p) for p in volume.slice_paths] == list(range(5))
    assert volume.spacing_zyx[0] == pytest.approx(2.0)


def test_files_written_in_descending_position_order(tmp_path: Path) -> None:
    paths = _write_series(tmp_path, 5, step=-4.0)  # index 0 is the highest slice
    volume = load_series_volume(paths)
    assert [_index_of(p) for p in volume.slice_paths] == [4, 3, 2, 1, 0]
    assert volume.spacing_zyx[0] == pytest.approx(4.0)
    np.testing.assert_array_equal(volume.data[0], _pixels(4).astype(np.float32))


def test_per_slice_rescale(tmp_path: Path) -> None:
    def slopes(index: int) -> tuple[float, float]:
        return (0.5 + 1.25 * index, -3.0 * index)

    paths = _write_series(tmp_path, 4, slopes=slopes)
    volume = load_series_volume(paths)
    for z in range(4):
        slope, intercept = slopes(z)
        expected = _pixels(z).astype(np.float64) * slope + intercept
        np.testing.assert_allclose(volume.data[z], expected, rtol=1e-6)


def test_signed_pixels(tmp_path: Path) -> None:
    def signed(index: int, ds: Dataset) -> None:
        ds.PixelRepresentation = 1
        ds.PixelData = (_pixels(index).astype(np.int16) - 50).astype("<i2").tobytes()

    volume = load_series_volume(_write_series(tmp_path, 3, tweak=signed))
    assert volume.data.min() == -50.0


def test_signed_pixels_stored_in_12_bits_are_sign_extended(tmp_path: Path) -> None:
    # Not the 16-bit fast path: pydicom's handler extends bit 11 as the sign.
    def twelve_bits(index: int, ds: Dataset) -> None:
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
        values = _pixels(index).astype(np.int16) - 50
        ds.PixelData = (values.astype(np.uint16) & 0x0FFF).astype("<u2").tobytes()

    volume = load_series_volume(_write_series(tmp_path, 3, tweak=twelve_bits))
    assert volume.data.min() == -50.0
    np.testing.assert_array_equal(volume.data[2], _pixels(2).astype(np.float32) - 50)


@pytest.mark.parametrize("seed", range(5))
def test_planes_are_reordered_in_place_like_a_take(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.random((40, 3, 2)).astype(np.float32)
    order = rng.permutation(40)
    expected = np.take(data, order, axis=0)
    _reorder_planes(data, order)
    np.testing.assert_array_equal(data, expected)


def test_compressed_transfer_syntax(tmp_path: Path) -> None:
    paths = _write_series(tmp_path, 4, slopes=lambda i: (2.0, 1.0))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    volume = load_series_volume(paths)
    np.testing.assert_array_equal(volume.data[2], _pixels(2) * 2.0 + 1.0)


def _set(keyword: str, value: object, at: int = 2) -> Callable[[int, Dataset], None]:
    def tweak(index: int, ds: Dataset) -> None:
        if index == at:
            setattr(ds, keyword, value)
            if keyword in ("Rows", "Columns"):
                ds.PixelData = np.zeros((ds.Rows, ds.Columns), "<u2").tobytes()

    return tweak


@pytest.mark.parametrize(
    ("tweak", "reason"),
    [
        (_set("Rows", ROWS + 1), "inconsistent image size"),
        (_set("ImageOrientationPatient", [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]), "ImageOrientation"),
        (_set("PixelSpacing", [2.0, 4.0]), "PixelSpacing"),
        (_set("ImagePositionPatient", [-10.0, 5.0, 43.0]), "same position"),
        (_set("ImagePositionPatient", [-10.0, 5.0, 49.9]), "irregular slice spacing"),
    ],
)
def test_inconsistent_series_is_a_permanent_error(
    tmp_path: Path, tweak: Callable[[int, Dataset], None], reason: str
) -> None:
    paths = _write_series(tmp_path, 5, tweak=tweak)
    with pytest.raises(PermanentError, match=reason):
        load_series_volume(paths)


def test_degenerate_orientation(tmp_path: Path) -> None:
    def degenerate(index: int, ds: Dataset) -> None:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]

    with pytest.raises(PermanentError, match="degenerate"):
        load_series_volume(_write_series(tmp_path, 3, tweak=degenerate))


def test_missing_geometry_and_garbage_files(tmp_path: Path) -> None:
    def drop_position(index: int, ds: Dataset) -> None:
        if index == 1:
            del ds.ImagePositionPatient

    with pytest.raises(PermanentError, match="ImagePositionPatient"):
        load_series_volume(_write_series(tmp_path / "a", 3, tweak=drop_position))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom")
    with pytest.raises(PermanentError, match=r"garbage\.dcm"):
        load_series_volume([*_write_series(tmp_path / "b", 3), garbage])
    with pytest.raises(PermanentError):
        load_series_volume([])


def test_single_slice_uses_slice_thickness(tmp_path: Path) -> None:
    volume = load_series_volume(_write_series(tmp_path, 1))
    assert volume.shape == (1, ROWS, COLS)
    assert volume.spacing_zyx[0] == pytest.approx(2.0)  # SliceThickness of the test builder


@pytest.mark.parametrize(
    ("vendor", "syntax"),
    [
        ("siemens", "1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
        ("ge", "1.2.840.10008.1.2.4.70"),  # JPEG Lossless SV1, made by DCMTK
        ("siemens", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        ("ge", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ],
)
def test_synthetic_vendor_series(tmp_path: Path, vendor: str, syntax: str) -> None:
    from petray.demo.synth import make_pet_series, write_series

    paths = write_series(
        make_pet_series(slices=9, rows=32, cols=40, seed=5, vendor=vendor, transfer_syntax=syntax),
        tmp_path,
    )
    random.Random(1).shuffle(paths)
    volume = load_series_volume(paths)
    assert volume.shape == (9, 32, 40)
    assert (np.diff(volume.positions[:, 2]) > 0).all()
    for z, path in enumerate(volume.slice_paths):
        ds = pydicom.dcmread(path)
        assert str(ds.file_meta.TransferSyntaxUID) == syntax
        expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope)
        expected += float(ds.RescaleIntercept)
        np.testing.assert_allclose(volume.data[z], expected, rtol=1e-6, atol=1e-3)
    assert volume.data.max() > 0
