"""Reading upload archives and writing result archives (REMOTE_PROTOCOL.md, "Upload archive" and
"Result archive"), including the deliberately bad archives of the ``malicious`` test switch.

Arrays are streamed through ``numpy.lib.format`` with a hashing wrapper, so a 500 MB volume is
hashed and decoded in one pass without a second in-memory copy of its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

METADATA_NAME = "metadata.json"
DENOISED_NAME = "denoised.npy"
NOISE_NAME = "noise.npy"
EXPECTED_DTYPE = np.dtype(np.float32)
_ZERO_CHUNK_BYTES = 1 << 24


class InputRejected(ValueError):
    """The upload archive does not follow the protocol; the job fails with this reason."""


class MaliciousMode(StrEnum):
    """Bad result archives on demand, each one a rule petray's Unpacker must enforce."""

    TRAVERSAL = "traversal"  # an extra entry "../evil" outside the archive root
    WRONG_SHAPE = "wrong_shape"  # denoised/noise one slice short of the input
    NAN = "nan"  # a NaN in denoised.npy
    NOISE_NAN = "noise_nan"  # a NaN in noise.npy, denoised.npy good
    OVERSIZED = "oversized"  # denoised.npy: zeros whose uncompressed size exceeds a limit
    SYMLINK = "symlink"  # an extra entry stored as a symbolic link to /etc/passwd
    WRONG_DTYPE = "wrong_dtype"  # float64 arrays instead of float32


TRAVERSAL_ENTRY = "../evil"
SYMLINK_ENTRY = "evil_link"
SYMLINK_TARGET = "/etc/passwd"


class _HashingReader:
    """File-like wrapper hashing every byte that ``numpy.lib.format`` reads."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        return data


class _HashingWriter:
    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._raw.write(data)


@dataclass(frozen=True)
class UploadedVolume:
    task_id: str
    volume: npt.NDArray[np.float32]
    metadata: dict[str, Any]


def read_upload(path: Path, *, task_id: str, max_bytes: int) -> UploadedVolume:
    """Open ``to_process/{task_id}.zip``, check it against its metadata.json, return the volume."""
    npy_name = f"{task_id}.npy"
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            missing = {npy_name, METADATA_NAME} - infos.keys()
            if missing:
                raise InputRejected(f"archive lacks {sorted(missing)}")
            total = sum(info.file_size for info in infos.values())
            if total > max_bytes:
                raise InputRejected(f"archive expands to {total} bytes, limit {max_bytes}")
            metadata = json.loads(archive.read(METADATA_NAME))
            if not isinstance(metadata, dict):
                raise InputRejected("metadata.json is not a JSON object")
            with archive.open(npy_name) as raw:
                reader = _HashingReader(raw)
                volume = np.lib.format.read_array(reader, allow_pickle=False)
                reader.read()  # trailing bytes count towards the checksum too
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, InputRejected):
            raise
        raise InputRejected(f"unreadable archive: {type(exc).__name__}: {exc}") from exc
    _check_upload(metadata, volume, reader.sha256.hexdigest(), task_id=task_id)
    return UploadedVolume(task_id=task_id, volume=volume, metadata=metadata)


def _check_upload(
    metadata: dict[str, Any], volume: npt.NDArray[Any], digest: str, *, task_id: str
) -> None:
    if metadata.get("task_id") != task_id:
        raise InputRejected("metadata.json task_id does not match the archive name")
    if metadata.get("sha256") != digest:
        raise InputRejected("sha256 of the npy file does not match metadata.json")
    try:
        declared_dtype = np.dtype(metadata.get("dtype"))
    except TypeError as exc:
        raise InputRejected(f"metadata.json dtype is invalid: {exc}") from None
    if volume.dtype != EXPECTED_DTYPE or declared_dtype != EXPECTED_DTYPE:
        raise InputRejected(f"expected float32, got {volume.dtype} (declared {declared_dtype})")
    if list(volume.shape) != list(metadata.get("shape", [])) or volume.ndim != 3:
        raise InputRejected(
            f"array shape {volume.shape} differs from declared {metadata.get('shape')}"
        )
    if not np.all(np.isfinite(volume)):
        raise InputRejected("volume contains NaN or infinite values")


def write_npy_entry(archive: zipfile.ZipFile, name: str, array: npt.NDArray[Any]) -> str:
    """Stream ``array`` into ``archive`` as ``name``; returns the sha256 of the npy bytes."""
    with archive.open(name, "w", force_zip64=True) as raw:
        writer = _HashingWriter(raw)
        np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
    return writer.sha256.hexdigest()


def _write_zero_bomb(archive: zipfile.ZipFile, name: str, size_bytes: int) -> None:
    """A valid-looking float32 npy of zeros: tiny on disk, ``size_bytes`` when extracted."""
    count = size_bytes // EXPECTED_DTYPE.itemsize + 1
    with archive.open(name, "w", force_zip64=True) as raw:
        header = {"descr": EXPECTED_DTYPE.str, "fortran_order": False, "shape": (count,)}
        np.lib.format.write_array_header_2_0(raw, header)
        remaining = count * EXPECTED_DTYPE.itemsize
        chunk = bytes(_ZERO_CHUNK_BYTES)
        while remaining > 0:
            step = min(remaining, _ZERO_CHUNK_BYTES)
            raw.write(chunk[:step])
            remaining -= step


def _link_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode bits in external_attr are meaningful
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@dataclass(frozen=True)
class ResultSpec:
    task_id: str
    algorithm: str
    algorithm_version: str
    compress_level: int = 0
    malicious: MaliciousMode | None = None
    oversized_bytes: int = 9 * 1024**3


def write_result(
    directory: Path,
    spec: ResultSpec,
    denoised: npt.NDArray[np.float32],
    noise: npt.NDArray[np.float32],
) -> Path:
    """Write ``directory/{task_id}.zip`` under a temporary name, then rename it into place.

    The temporary name starts with a dot and does not end in ``.zip``, so nobody watching the
    folder mistakes a half-written archive for a result.
    """
    final = directory / f"{spec.task_id}.zip"
    mode = spec.malicious
    if mode is MaliciousMode.WRONG_SHAPE:
        cut = (slice(None, -1),) if denoised.shape[0] > 1 else (Ellipsis, slice(None, -1))
        denoised, noise = denoised[cut], noise[cut]
    elif mode is MaliciousMode.WRONG_DTYPE:
        denoised, noise = denoised.astype(np.float64), noise.astype(np.float64)
    elif mode is MaliciousMode.NAN:
        denoised = denoised.copy()
        denoised[tuple(n // 2 for n in denoised.shape)] = np.nan
    elif mode is MaliciousMode.NOISE_NAN:
        noise = noise.copy()
        noise[tuple(n // 2 for n in noise.shape)] = np.nan
    compression = zipfile.ZIP_DEFLATED if spec.compress_level > 0 else zipfile.ZIP_STORED
    if mode is MaliciousMode.OVERSIZED:
        compression = zipfile.ZIP_DEFLATED  # the point of a bomb is a small file
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{spec.task_id}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(
            tmp, "w", compression=compression, compresslevel=spec.compress_level or 9
        ) as archive:
            digests: dict[str, str] = {}
            if mode is MaliciousMode.OVERSIZED:
                _write_zero_bomb(archive, DENOISED_NAME, spec.oversized_bytes)
            else:
                digests[DENOISED_NAME] = write_npy_entry(archive, DENOISED_NAME, denoised)
                digests[NOISE_NAME] = write_npy_entry(archive, NOISE_NAME, noise)
            if mode is MaliciousMode.TRAVERSAL:
                archive.writestr(TRAVERSAL_ENTRY, b"written outside the extraction root\n")
            elif mode is MaliciousMode.SYMLINK:
                archive.writestr(_link_info(SYMLINK_ENTRY), SYMLINK_TARGET)
            metadata = {
                "task_id": spec.task_id,
                "sha256": digests,
                "algorithm": {"name": spec.algorithm, "version": spec.algorithm_version},
                "shape": list(denoised.shape),
                "dtype": str(denoised.dtype),
            }
            archive.writestr(METADATA_NAME, json.dumps(metadata, indent=2))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final
