from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from petray.errors import ArchiveRejected
from petray.service.archive import (
    DENOISED_NAME,
    METADATA_NAME,
    NOISE_NAME,
    read_result_archive,
    verify_zip,
    write_upload_archive,
)

SHAPE = (6, 10, 12)
LIMIT = 10 * 1024 * 1024


def _volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 300.0, size=shape).astype(np.float32)


def _npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _zip(path: Path, entries: dict[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _read(path: Path, **kwargs: object) -> object:
    options: dict[str, object] = {"expected_shape": SHAPE, "max_uncompressed_bytes": LIMIT}
    options.update(kwargs)
    return read_result_archive(path, **options)  # type: ignore[arg-type]


# --- upload archive ---------------------------------------------------------------------------


def test_upload_archive_round_trip(tmp_path: Path) -> None:
    volume = _volume()
    volume.setflags(write=False)  # as it comes from the Ray object store
    target = tmp_path / "to_process" / "t1.zip"
    digest = write_upload_archive(
        target,
        task_id="t1",
        volume=volume,
        voxel_spacing_zyx=(3.0, 2.0, 2.0),
        metadata={"client_id": "site-a", "Radiofarmaco": "FDG", "task_id": "t1"},
        compresslevel=1,
    )
    with zipfile.ZipFile(target) as zf:
        assert sorted(zf.namelist()) == [METADATA_NAME, "t1.npy"]
        npy = zf.read("t1.npy")
        meta = json.loads(zf.read(METADATA_NAME))
        assert zf.getinfo("t1.npy").compress_type == zipfile.ZIP_DEFLATED
    assert hashlib.sha256(npy).hexdigest() == digest == meta["sha256"]
    loaded = np.load(io.BytesIO(npy), allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, volume)
    assert meta["task_id"] == "t1"
    assert meta["client_id"] == "site-a"
    assert meta["Radiofarmaco"] == "FDG"
    assert meta["shape"] == list(SHAPE)
    assert meta["dtype"] == "float32"
    assert meta["voxel_spacing_mm"] == [3.0, 2.0, 2.0]
    assert [p.name for p in target.parent.iterdir()] == ["t1.zip"]


def test_upload_archive_level_zero_is_stored_and_non_contiguous_input_ok(tmp_path: Path) -> None:
    volume = _volume()[:, ::-1, :]  # a view, not C-contiguous
    target = tmp_path / "t2.zip"
    write_upload_archive(
        target, task_id="t2", volume=volume, voxel_spacing_zyx=(2, 2, 2), metadata={},
        compresslevel=0,
    )  # fmt: skip
    with zipfile.ZipFile(target) as zf:
        assert zf.getinfo("t2.npy").compress_type == zipfile.ZIP_STORED
        np.testing.assert_array_equal(np.load(io.BytesIO(zf.read("t2.npy"))), volume)


def test_upload_archive_failure_leaves_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "t3.zip"
    target.write_bytes(b"previous")
    volume = _volume()
    volume[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_upload_archive(
            target, task_id="t3", volume=volume, voxel_spacing_zyx=(2, 2, 2), metadata={},
            compresslevel=1,
        )  # fmt: skip
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["t3.zip"]


@pytest.mark.parametrize(
    ("volume", "metadata"),
    [
        (np.zeros(SHAPE, np.float64), {}),
        (np.zeros((4, 4), np.float32), {}),
        (np.zeros(SHAPE, np.float32), {"sha256": "x"}),
        (np.zeros(SHAPE, np.float32), {"task_id": "another"}),
        (np.zeros(SHAPE, np.float32), {"shape": [1, 2, 3]}),
    ],
)
def test_upload_archive_rejects_bad_input(
    tmp_path: Path, volume: np.ndarray, metadata: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        write_upload_archive(
            tmp_path / "t.zip", task_id="t", volume=volume, voxel_spacing_zyx=(2, 2, 2),
            metadata=metadata, compresslevel=1,
        )  # fmt: skip
    assert not (tmp_path / "t.zip").exists()


# --- result archive: the good path ---------------------------------------------------------------


def test_result_archive_with_noise_and_checksums(tmp_path: Path) -> None:
    denoised, noise = _volume(1), _volume(2) - 600
    d_bytes, n_bytes = _npy_bytes(denoised), _npy_bytes(noise)
    meta = {
        "task_id": "t",
        "sha256": {
            DENOISED_NAME: hashlib.sha256(d_bytes).hexdigest(),
            "noise": hashlib.sha256(n_bytes).hexdigest(),
        },
        "algorithm": {"name": "bilateral", "version": "1.2"},
    }
    path = _zip(
        tmp_path / "r.zip",
        {DENOISED_NAME: d_bytes, NOISE_NAME: n_bytes, METADATA_NAME: json.dumps(meta).encode()},
    )
    result = _read(path)
    np.testing.assert_array_equal(result.denoised, denoised)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(result.noise, noise)  # type: ignore[attr-defined]
    assert result.algorithm == "bilateral 1.2"  # type: ignore[attr-defined]
    verify_zip(path)


def test_result_archive_denoised_only(tmp_path: Path) -> None:
    path = _zip(tmp_path / "r.zip", {DENOISED_NAME: _npy_bytes(_volume())})
    result = _read(path)
    assert result.noise is None  # type: ignore[attr-defined]
    assert result.algorithm == ""  # type: ignore[attr-defined]


def test_result_arrays_are_handed_over_one_by_one_once_checked(tmp_path: Path) -> None:
    denoised, noise = _volume(1), _volume(2) - 600
    path = _zip(
        tmp_path / "r.zip", {DENOISED_NAME: _npy_bytes(denoised), NOISE_NAME: _npy_bytes(noise)}
    )
    kept: list[str] = []

    def keep(name: str, array: np.ndarray) -> np.ndarray:
        kept.append(name)
        shared = array.copy()  # stands for the object store's copy
        shared.flags.writeable = False
        return shared

    result = read_result_archive(
        path, expected_shape=SHAPE, max_uncompressed_bytes=10**8, keep=keep
    )
    assert kept == [DENOISED_NAME, NOISE_NAME]
    assert not result.denoised.flags.writeable and result.noise is not None
    np.testing.assert_array_equal(result.noise, noise)
    # An array that fails its checks is never handed over.
    kept.clear()
    bad = _zip(tmp_path / "bad.zip", {DENOISED_NAME: _npy_bytes(denoised * 1e9)})
    with pytest.raises(ArchiveRejected, match="implausible"):
        read_result_archive(
            bad, expected_shape=SHAPE, max_uncompressed_bytes=10**8, input_peak=1.0, keep=keep
        )
    assert kept == []


# --- result archive: rejections --------------------------------------------------------------


def _good() -> bytes:
    return _npy_bytes(_volume())


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ({"../denoised.npy": b"x", DENOISED_NAME: b"y"}, "outside the archive root"),
        ({"sub/../../denoised.npy": b"x"}, "outside the archive root"),
        ({"/tmp/denoised.npy": b"x"}, "absolute"),
        ({"..\\denoised.npy": b"x"}, "backslash"),
        ({"C:/denoised.npy": b"x"}, "absolute"),
        ({_symlink_info(DENOISED_NAME): b"/etc/passwd"}, "symbolic link"),
        ({DENOISED_NAME: b"y", "extra.txt": b"x"}, "unexpected archive entry"),
        ({"results/": b""}, "unexpected archive entry"),
        ({NOISE_NAME: b"x"}, "no denoised.npy"),
        ({DENOISED_NAME: _npy_bytes(_volume(shape=(6, 10, 11)))}, "shape"),
        ({DENOISED_NAME: _npy_bytes(_volume().astype(np.float64))}, "not float32"),
        (
            {DENOISED_NAME: _npy_bytes(np.empty(SHAPE, dtype=object), allow_pickle=True)},
            "not float32",
        ),
        ({DENOISED_NAME: _good()[:-10]}, "truncated"),
        ({DENOISED_NAME: _good() + b"\0" * 8}, "trailing"),
        ({DENOISED_NAME: b"not an npy file at all"}, "not a valid npy"),
        ({DENOISED_NAME: _good(), NOISE_NAME: _npy_bytes(_volume(shape=(1, 2, 3)))}, "shape"),
        ({DENOISED_NAME: _good(), METADATA_NAME: b"{not json"}, "not valid JSON"),
        ({DENOISED_NAME: _good(), METADATA_NAME: b"[1, 2]"}, "not a JSON object"),
        (
            {DENOISED_NAME: _good(), METADATA_NAME: b'{"sha256": {"denoised.npy": "00"}}'},
            "sha256 does not match",
        ),
    ],
)
def test_result_archive_rejections(
    tmp_path: Path, entries: dict[str | zipfile.ZipInfo, bytes], reason: str
) -> None:
    path = _zip(tmp_path / "bad.zip", entries)
    with pytest.raises(ArchiveRejected, match=reason):
        _read(path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_result_archive_rejects_non_finite(tmp_path: Path, bad_value: float) -> None:
    volume = _volume()
    volume[5, 9, 11] = bad_value
    path = _zip(tmp_path / "nan.zip", {DENOISED_NAME: _npy_bytes(volume)})
    with pytest.raises(ArchiveRejected, match="NaN or infinite"):
        _read(path)


def test_result_archive_rejects_duplicate_names(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with (
        pytest.warns(UserWarning, match="Duplicate name"),
        zipfile.ZipFile(path, "w") as zf,
    ):
        zf.writestr(DENOISED_NAME, _good())
        zf.writestr(DENOISED_NAME, _good())
    with pytest.raises(ArchiveRejected, match="duplicate"):
        _read(path)


def test_result_archive_size_limit_uses_declared_sizes(tmp_path: Path) -> None:
    path = _zip(tmp_path / "big.zip", {DENOISED_NAME: _good()})
    with pytest.raises(ArchiveRejected, match="over the limit"):
        _read(path, max_uncompressed_bytes=1000)


def test_result_archive_rejects_ratio_bomb(tmp_path: Path) -> None:
    shape = (64, 128, 128)  # 4 MiB of zeros deflates to a few KiB
    path = _zip(tmp_path / "bomb.zip", {DENOISED_NAME: _npy_bytes(np.zeros(shape, np.float32))})
    with pytest.raises(ArchiveRejected, match="compression ratio"):
        _read(path, expected_shape=shape)


def test_result_archive_counts_bytes_when_headers_lie(tmp_path: Path) -> None:
    """A local header and central directory that under-declare the size must not slip through."""
    data = _good()
    path = _zip(tmp_path / "lie.zip", {DENOISED_NAME: data})
    raw = bytearray(path.read_bytes())
    true_size = len(data).to_bytes(4, "little")
    small = (len(data) // 2).to_bytes(4, "little")
    assert raw.count(true_size) == 2  # local header + central directory entry
    path.write_bytes(bytes(raw.replace(true_size, small)))
    with pytest.raises(ArchiveRejected):
        _read(path)


def test_corrupt_archives_are_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ArchiveRejected, match="not a readable zip"):
        _read(garbage)
    with pytest.raises(ArchiveRejected):
        verify_zip(garbage)

    good = _zip(tmp_path / "good.zip", {DENOISED_NAME: _good()})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ArchiveRejected):
        _read(truncated)
    with pytest.raises(ArchiveRejected):
        verify_zip(truncated)


def test_crc_damage_is_detected(tmp_path: Path) -> None:
    data = _good()
    path = tmp_path / "stored.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(DENOISED_NAME, data)
    raw = bytearray(path.read_bytes())
    index = raw.find(data[200:232])
    assert index > 0
    raw[index] ^= 0xFF  # one flipped payload byte, still a finite float
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveRejected, match="CRC"):
        verify_zip(path)
    with pytest.raises(ArchiveRejected):
        _read(path)


def test_verify_zip_limit(tmp_path: Path) -> None:
    path = _zip(tmp_path / "v.zip", {DENOISED_NAME: _good()})
    verify_zip(path, max_uncompressed_bytes=LIMIT)
    with pytest.raises(ArchiveRejected, match="over the limit"):
        verify_zip(path, max_uncompressed_bytes=100)


# --- against petray's reference service (the other side of the protocol) --------------------


def test_reference_service_reads_our_upload(tmp_path: Path) -> None:
    from serve.reference.archive import read_upload

    volume = _volume()
    path = tmp_path / "t9.zip"
    write_upload_archive(
        path, task_id="t9", volume=volume, voxel_spacing_zyx=(3, 2, 2),
        metadata={"client_id": "site"}, compresslevel=1,
    )  # fmt: skip
    uploaded = read_upload(path, task_id="t9", max_bytes=LIMIT)
    np.testing.assert_array_equal(uploaded.volume, volume)


@pytest.mark.parametrize("mode", [None, "traversal", "wrong_shape", "nan", "noise_nan",
                                  "oversized", "symlink", "wrong_dtype"])  # fmt: skip
def test_reference_service_results(tmp_path: Path, mode: str | None) -> None:
    from serve.reference.archive import MaliciousMode, ResultSpec, write_result

    spec = ResultSpec(
        task_id="t8", algorithm="guided", algorithm_version="1", compress_level=1,
        malicious=MaliciousMode(mode) if mode else None, oversized_bytes=LIMIT + 1,
    )  # fmt: skip
    path = write_result(tmp_path, spec, _volume(1), _volume(2) - 600)
    if mode is None:
        result = _read(path)
        np.testing.assert_array_equal(result.denoised, _volume(1))  # type: ignore[attr-defined]
        assert result.algorithm == "guided 1"  # type: ignore[attr-defined]
    else:
        with pytest.raises(ArchiveRejected):
            _read(path)


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(lambda v: v.astype(">f4"), id="big-endian float32"),
        pytest.param(np.asfortranarray, id="Fortran order"),
    ],
)
def test_result_archive_accepts_any_layout_of_float32(tmp_path: Path, stored: Any) -> None:
    # Tolerant when reading: still float32 as the protocol asks, converted to C-order native.
    volume = _volume()
    path = tmp_path / "result.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(DENOISED_NAME, _npy_bytes(stored(volume)))
    result = read_result_archive(path, expected_shape=SHAPE, max_uncompressed_bytes=10**8)
    assert result.denoised.dtype == np.dtype("<f4")
    assert result.denoised.flags.c_contiguous
    np.testing.assert_array_equal(result.denoised, volume)
