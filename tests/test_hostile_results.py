"""Hostile result archives (issue 9): the wrong task's result, absurd finite values."""

from __future__ import annotations

import io
import json
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from petray.errors import ArchiveRejected
from petray.service.archive import (
    DENOISED_NAME,
    METADATA_NAME,
    NOISE_NAME,
    peak_magnitude,
    read_result_archive,
)

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


# -- the archive corpus: every unsafe or wrong archive refused with its reason --------------------


def entries(path: Path, items: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """A zip of exactly these entries (names and attributes as given, nothing checked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in items:
                zf.writestr(info, data)
    return path


def named(name: str, *, symlink: bool = False, method: int = 8) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = method
    if symlink:
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


class Nameless(zipfile.ZipInfo):
    """An entry zipfile would refuse to write: its name is empty (found by fuzzing)."""

    def is_dir(self) -> bool:
        return False


def raw_npy(header: dict[str, object], data: bytes) -> bytes:
    text = repr(header).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


GOOD = npy(volume())
ARCHIVES: dict[str, tuple[list[tuple[zipfile.ZipInfo | str, bytes]], str]] = {
    "zip-slip-parent": ([("../denoised.npy", GOOD)], "points outside the archive root"),
    "zip-slip-nested": (
        [(DENOISED_NAME, GOOD), ("a/../../etc/cron.d/x", b"")],
        "points outside the archive root",
    ),
    "zip-slip-absolute": ([("/tmp/denoised.npy", GOOD)], "is an absolute path"),
    "zip-slip-drive": ([("C:/denoised.npy", GOOD)], "is an absolute path"),
    "zip-slip-backslash": ([("..\\denoised.npy", GOOD)], "contains a backslash"),
    "symlink": ([(named(DENOISED_NAME, symlink=True), b"/etc/passwd")], "is a symbolic link"),
    "unexpected-entry": ([(DENOISED_NAME, GOOD), ("run.sh", b"rm -rf /")], "unexpected archive"),
    "directory-entry": ([(DENOISED_NAME, GOOD), ("noise.npy/", b"")], "unexpected archive entry"),
    "entry-without-name": ([(DENOISED_NAME, GOOD), (Nameless(""), b"x")], "entry without a name"),
    "duplicate-names": ([(DENOISED_NAME, GOOD), (DENOISED_NAME, GOOD)], "duplicate entry names"),
    "missing-denoised": ([(NOISE_NAME, GOOD)], f"archive has no {DENOISED_NAME}"),
    "bzip2-entry": (
        [(named(DENOISED_NAME, method=zipfile.ZIP_BZIP2), GOOD)],
        "unsupported compression method",
    ),
    "float64": ([(DENOISED_NAME, npy(volume().astype(np.float64)))], "dtype <f8 is not float32"),
    "int16": ([(DENOISED_NAME, npy(volume().astype(np.int16)))], "dtype <i2 is not float32"),
    "complex64-same-size": (
        [(DENOISED_NAME, raw_npy({"descr": "<c8", "fortran_order": False, "shape": SHAPE}, b""))],
        "dtype <c8 is not float32",
    ),
    "object-dtype-pickle": (
        [(DENOISED_NAME, raw_npy({"descr": "|O", "fortran_order": False, "shape": SHAPE}, b""))],
        "dtype |O is not float32",
    ),
    "wrong-shape": (
        [(DENOISED_NAME, npy(np.zeros((8, 10, 13), np.float32)))],
        "shape (8, 10, 13) differs from expected (8, 10, 12)",
    ),
    "wrong-ndim": (
        [(DENOISED_NAME, npy(np.zeros((80, 12), np.float32)))],
        "shape (80, 12) differs from expected",
    ),
    "nan": ([(DENOISED_NAME, npy(np.full(SHAPE, np.nan, np.float32)))], "NaN or infinite"),
    "infinity-in-slice-6": (
        [(DENOISED_NAME, npy(np.where(np.arange(8)[:, None, None] == 6, np.inf, volume())))],
        "NaN or infinite values in slice 6",
    ),
    "truncated-array": ([(DENOISED_NAME, GOOD[:-100])], "truncated array data"),
    "trailing-bytes": ([(DENOISED_NAME, GOOD + b"\x00" * 8)], "trailing bytes after the array"),
    "not-npy": ([(DENOISED_NAME, b"PK\x03\x04 definitely not numpy")], "not a valid npy array"),
    "npy-header-code": (
        [(DENOISED_NAME, b"\x93NUMPY\x01\x00\x20\x00__import__('os').system('x')  \n")],
        "not a valid npy array",
    ),
    "metadata-not-json": ([(DENOISED_NAME, GOOD), (METADATA_NAME, b"{task_id:")], "not valid JSON"),
    "metadata-a-list": ([(DENOISED_NAME, GOOD), (METADATA_NAME, b"[1, 2]")], "not a JSON object"),
    "sha256-mismatch": (
        [(DENOISED_NAME, GOOD), (METADATA_NAME, b'{"sha256": {"denoised.npy": "00ff"}}')],
        "sha256 does not match metadata.json",
    ),
}


@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_unsafe_or_wrong_archive_is_refused_with_its_reason(tmp_path: Path, case: str) -> None:
    items, reason = ARCHIVES[case]
    path = entries(tmp_path / "result.zip", items)
    with pytest.raises(ArchiveRejected) as caught:
        read(path, input_peak=None)
    assert reason in str(caught.value)
    # Nothing was written beside the archive (a slip would have created files).
    assert [p.name for p in tmp_path.iterdir()] == ["result.zip"]


def test_near_empty_payload_is_refused_for_its_compression_ratio(tmp_path: Path) -> None:
    shape = (64, 64, 64)  # 1 MiB of zeros deflates about 1000:1
    path = entries(tmp_path / "r.zip", [(DENOISED_NAME, npy(np.zeros(shape, np.float32)))])
    with pytest.raises(ArchiveRejected, match="suspicious compression ratio"):
        read_result_archive(path, expected_shape=shape, max_uncompressed_bytes=LIMIT)


def test_declared_size_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = entries(tmp_path / "r.zip", [(DENOISED_NAME, GOOD)])
    with pytest.raises(ArchiveRejected, match="over the limit of 1000"):
        read_result_archive(path, expected_shape=SHAPE, max_uncompressed_bytes=1000)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "not a readable zip"), (b"PK\x05\x06" + bytes(18), "archive has no denoised.npy")],
    ids=["empty-file", "empty-zip"],
)
def test_not_an_archive_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "r.zip"
    path.write_bytes(content)
    with pytest.raises(ArchiveRejected, match=reason):
        read(path, input_peak=None)


def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    path = entries(tmp_path / "r.zip", [(DENOISED_NAME, GOOD)])
    data = bytearray(path.read_bytes())
    # zipfile never writes the encryption bit: set it in the local and the central header.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at] |= 0x1
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveRejected, match="is encrypted"):
        read(path, input_peak=None)
