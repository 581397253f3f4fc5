"""The zip archives exchanged with the processing service (REMOTE_PROTOCOL.md, issues 3 and 4).

Upload: ``{task_id}.npy`` + ``metadata.json``, written atomically and streamed (the volume is never
copied whole into a second buffer). Result: ``denoised.npy`` (+ ``noise.npy``, ``metadata.json``),
read defensively: the archive comes from another organisation over a shared folder, so every
name, size, dtype and value is checked, nothing is ever extracted to a path taken from the archive,
and pickled arrays are never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from petray.errors import ArchiveRejected
from petray.service.deflate import ParallelDeflate

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
DENOISED_NAME = "denoised.npy"
NOISE_NAME = "noise.npy"
RESULT_NAMES = frozenset({DENOISED_NAME, NOISE_NAME, METADATA_NAME})
VOLUME_DTYPE = np.dtype("<f4")
# Fields petray computes itself; caller metadata may not contradict them.
COMPUTED_FIELDS = ("task_id", "shape", "dtype", "voxel_spacing_mm", "sha256")
MAX_METADATA_BYTES = 1024 * 1024
# An npy header is padded to 64 bytes and numpy refuses headers beyond 10 000 bytes; anything
# larger than data + this is not an honest array of the expected shape.
MAX_NPY_HEADER_BYTES = 10_000 + 64
# Real PET volumes compress a few times at most (float32 noise); even a 99 % empty field of view
# stays under ~100:1. Deflate itself tops out near 1032:1, so this flags near-empty payloads.
DEFAULT_MAX_RATIO = 250.0
# What zipfile raises for damaged archives besides BadZipFile (issue 9, found by fuzzing): a
# corrupt deflate stream (zlib.error), an undecodable UTF-8 entry name (ValueError), a
# truncated one (EOFError).
UNREADABLE = (EOFError, OSError, NotImplementedError, RuntimeError, ValueError, zlib.error)
ALLOWED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
# Issue 9: a result value beyond this factor times the input's largest magnitude is not a
# denoised activity concentration (one 3e38 voxel zeroed two slices through their rescale).
DEFAULT_MAX_FACTOR = 100.0
CHUNK_BYTES = 4 * 1024 * 1024
# Threads compressing the upload's volume: packing runs after ingest, when the gateway's other
# core is otherwise idle (the 2-core machine petray is sized for).
DEFLATE_THREADS = 2


@dataclass(frozen=True, slots=True)
class ResultArrays:
    denoised: np.ndarray
    noise: np.ndarray | None
    algorithm: str


class _HashingWriter:
    """File-like sink that hashes what passes through on its way into the zip entry."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.sha256.update(data)
        return self._sink.write(data)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_volume(volume: np.ndarray, voxel_spacing_zyx: Sequence[float]) -> None:
    if volume.dtype != np.float32 or volume.ndim != 3:
        raise ValueError(f"volume must be float32 (z, y, x), got {volume.dtype} {volume.shape}")
    if len(voxel_spacing_zyx) != 3 or not all(
        math.isfinite(s) and s > 0 for s in voxel_spacing_zyx
    ):
        raise ValueError("voxel spacing must be three positive millimetre values (z, y, x)")


def _normalised(value: Any) -> Any:
    # JSON has no tuples: (6, 10, 12) and [6, 10, 12] are the same shape.
    return list(value) if isinstance(value, (list, tuple)) else value


def write_upload_archive(
    path: Path,
    *,
    task_id: str,
    volume: np.ndarray,
    voxel_spacing_zyx: Sequence[float],
    metadata: Mapping[str, Any],
    compresslevel: int,
) -> str:
    """Write ``{task_id}.npy`` and ``metadata.json`` into ``path`` atomically; return the sha256.

    The zip is built under a temporary name in the destination directory, fsynced and renamed,
    so a reader (or a crash) never sees half an archive. The npy is streamed slice by slice
    into the zip entry while being hashed. ``metadata`` must already be de-identified.
    """
    _check_volume(volume, voxel_spacing_zyx)
    if not 0 <= compresslevel <= 9:
        raise ValueError("compression level must be between 0 and 9")
    computed: dict[str, Any] = {
        "task_id": task_id,
        "shape": list(volume.shape),
        "dtype": "float32",
        "voxel_spacing_mm": [float(s) for s in voxel_spacing_zyx],
    }
    # Callers may repeat a computed field (the packer passes task_id) but never contradict one.
    clashes = [
        key
        for key in COMPUTED_FIELDS
        if key in metadata and (key == "sha256" or _normalised(metadata[key]) != computed[key])
    ]
    if clashes:
        raise ValueError(f"metadata contradicts computed fields: {', '.join(clashes)}")
    compression = zipfile.ZIP_DEFLATED if compresslevel > 0 else zipfile.ZIP_STORED
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression, compresslevel=compresslevel or None) as zf:
                # force_zip64: the entry size is unknown to zipfile while streaming and may
                # exceed 4 GiB for large whole-body volumes.
                with zf.open(f"{task_id}.npy", "w", force_zip64=True) as entry:
                    if compresslevel > 0 and hasattr(entry, "_compressor"):
                        # The volume compresses on two threads while this one hashes it and
                        # zipfile takes its CRC (petray.service.deflate).
                        entry._compressor = ParallelDeflate(compresslevel, threads=DEFLATE_THREADS)
                    writer = _HashingWriter(entry)
                    header = npy_format.header_data_from_array_1_0(volume)
                    header["fortran_order"] = False
                    npy_format.write_array_header_1_0(writer, header)
                    for z in range(volume.shape[0]):
                        plane = np.ascontiguousarray(volume[z])
                        if not np.isfinite(plane).all():
                            raise ValueError(f"volume has NaN or infinite values in slice {z}")
                        writer.write(plane.data.cast("B"))
                digest = writer.sha256.hexdigest()
                document = {**metadata, **computed, "sha256": digest}
                zf.writestr(
                    METADATA_NAME, json.dumps(document, indent=2, sort_keys=True, allow_nan=False)
                )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote upload archive %s (%d bytes)", path.name, path.stat().st_size)
    return digest


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if not name:
        # zipfile's own is_dir() fails on an empty name (found by fuzzing, issue 9).
        raise ArchiveRejected("archive has an entry without a name")
    if "\\" in name:
        raise ArchiveRejected(f"archive entry {name!r} contains a backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRejected(f"archive entry {name!r} is an absolute path")
    if ".." in name.split("/"):
        raise ArchiveRejected(f"archive entry {name!r} points outside the archive root")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveRejected(f"archive entry {name!r} is a symbolic link")
    if info.is_dir() or name not in RESULT_NAMES:
        raise ArchiveRejected(
            f"unexpected archive entry {name!r} (allowed: {', '.join(sorted(RESULT_NAMES))})"
        )
    if info.flag_bits & 0x1:
        raise ArchiveRejected(f"archive entry {name!r} is encrypted")
    if info.compress_type not in ALLOWED_COMPRESSION:
        raise ArchiveRejected(f"archive entry {name!r} uses an unsupported compression method")


class _Budget:
    """Counts bytes actually decompressed: declared sizes in a zip header can lie."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise ArchiveRejected(
                f"archive expands beyond the limit of {self.limit} bytes while reading"
            )


class _CountingReader:
    """Reads a zip entry, hashing and charging every byte to the budget."""

    def __init__(self, stream: IO[bytes], budget: _Budget, entry_limit: int) -> None:
        self._stream = stream
        self._budget = budget
        self._entry_limit = entry_limit
        self.count = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._entry_limit - self.count + 1
        data = self._stream.read(size)
        self.count += len(data)
        self._budget.take(len(data))
        if self.count > self._entry_limit:
            raise ArchiveRejected("archive entry is larger than its expected size")
        self.sha256.update(data)
        return data


def peak_magnitude(volume: np.ndarray) -> float:
    """The largest absolute value of a volume, slice by slice (no full-size temporary)."""
    peak = 0.0
    for plane in volume:
        if plane.size:
            peak = max(peak, float(np.max(plane)), -float(np.min(plane)))
    return peak


def check_plausible(array: np.ndarray, name: str, *, input_peak: float, factor: float) -> None:
    """ArchiveRejected naming the first slice and value beyond ``factor`` x ``input_peak``.

    The bound is never below ``factor`` (an all-zero input still allows small values).
    """
    bound = factor * max(input_peak, 1.0)
    for z in range(array.shape[0]):
        plane = array[z]
        if plane.size and max(float(np.max(plane)), -float(np.min(plane))) > bound:
            value = float(plane.flat[int(np.argmax(np.abs(plane)))])
            raise ArchiveRejected(
                f"{name}: value {value:.3g} in slice {z} is implausible "
                f"(beyond {factor:g} x the input's peak {input_peak:.3g})"
            )


def _read_npy(reader: _CountingReader, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
    try:
        version = npy_format.read_magic(reader)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(reader)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(reader)
        else:
            raise ArchiveRejected(f"{name}: unsupported npy format version {version}")
    except ArchiveRejected:
        raise
    except (ValueError, SyntaxError, EOFError, TypeError, OverflowError, TokenError) as exc:
        # numpy parses the header as a Python literal: a hostile one fails in its tokenizer.
        raise ArchiveRejected(f"{name}: not a valid npy array ({exc})") from None
    # Checked before any data is read: an object dtype would need pickle, never allowed.
    # Tolerant of how a float32 was written (either byte order, C or Fortran layout): both
    # are float32 as the protocol asks, and are converted after reading.
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize != VOLUME_DTYPE.itemsize:
        raise ArchiveRejected(f"{name}: dtype {dtype.str} is not float32")
    if tuple(shape) != tuple(expected_shape):
        raise ArchiveRejected(
            f"{name}: shape {tuple(shape)} differs from expected {expected_shape}"
        )
    stored_shape = tuple(reversed(expected_shape)) if fortran else tuple(expected_shape)
    array = np.empty(stored_shape, dtype=dtype)
    target = array.data.cast("B")
    offset = 0
    while offset < len(target):
        data = reader.read(min(CHUNK_BYTES, len(target) - offset))
        if not data:
            raise ArchiveRejected(f"{name}: truncated array data")
        target[offset : offset + len(data)] = data
        offset += len(data)
    if reader.read(1):
        raise ArchiveRejected(f"{name}: trailing bytes after the array data")
    if fortran:
        array = np.ascontiguousarray(array.T)
    if array.dtype != VOLUME_DTYPE:
        array = array.astype(VOLUME_DTYPE)
    for z in range(array.shape[0]):
        if not np.isfinite(array[z]).all():
            raise ArchiveRejected(f"{name}: NaN or infinite values in slice {z}")
    return array


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArchiveRejected(f"{path.name} is not a readable zip archive ({exc})") from None


def _sha_for(metadata: Mapping[str, Any], name: str) -> str | None:
    sums = metadata.get("sha256")
    if not isinstance(sums, Mapping):
        return None
    value = sums.get(name, sums.get(name.removesuffix(".npy")))
    return value.lower() if isinstance(value, str) else None


def _algorithm(metadata: Mapping[str, Any]) -> str:
    value = metadata.get("algorithm", "")
    if isinstance(value, Mapping):
        value = " ".join(str(value[k]) for k in ("name", "version") if value.get(k))
    return str(value)[:128]


def read_result_archive(
    path: Path,
    *,
    expected_shape: Sequence[int],
    max_uncompressed_bytes: int,
    max_ratio: float = DEFAULT_MAX_RATIO,
    expected_task_id: str | None = None,
    input_peak: float | None = None,
    max_factor: float = DEFAULT_MAX_FACTOR,
    keep: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> ResultArrays:
    """Read and check the service's result archive; raise ArchiveRejected with the reason.

    ``keep(name, array)`` receives each array once it passed every check and returns what the
    result holds instead (the Unpacker puts it into the object store and keeps the shared,
    read-only view): the private copy is then dropped before the next array is read.

    With ``expected_task_id``, a ``metadata.json`` naming another task is refused: it is the
    only sign that the service swapped two same-sized results (issue 9). With ``input_peak``
    (the uploaded volume's largest magnitude), every value of every array must stay within
    ``max_factor`` times it: denoising smooths activity, it never multiplies it a hundredfold.
    """
    shape = tuple(int(n) for n in expected_shape)
    npy_limit = int(np.prod(shape)) * VOLUME_DTYPE.itemsize + MAX_NPY_HEADER_BYTES
    try:
        with _open_zip(path) as zf:
            infos = zf.infolist()
            names = [info.filename for info in infos]
            for info in infos:
                _check_entry(info)
            if len(set(names)) != len(names):
                raise ArchiveRejected("archive has duplicate entry names")
            if DENOISED_NAME not in names:
                raise ArchiveRejected(f"archive has no {DENOISED_NAME}")
            declared = sum(info.file_size for info in infos)
            if declared > max_uncompressed_bytes:
                raise ArchiveRejected(
                    f"archive declares {declared} uncompressed bytes, "
                    f"over the limit of {max_uncompressed_bytes}"
                )
            for info in infos:
                limit = MAX_METADATA_BYTES if info.filename == METADATA_NAME else npy_limit
                if info.file_size > limit:
                    raise ArchiveRejected(f"{info.filename} is larger than expected")
                if info.file_size > max_ratio * max(info.compress_size, 1):
                    raise ArchiveRejected(
                        f"{info.filename} has a suspicious compression ratio "
                        f"({info.file_size} from {info.compress_size} bytes)"
                    )
            budget = _Budget(max_uncompressed_bytes)
            metadata: dict[str, Any] = {}
            if METADATA_NAME in names:
                with zf.open(METADATA_NAME) as stream:
                    reader = _CountingReader(stream, budget, MAX_METADATA_BYTES)
                    raw = reader.read()
                try:
                    loaded = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise ArchiveRejected(f"{METADATA_NAME} is not valid JSON") from None
                if not isinstance(loaded, dict):
                    raise ArchiveRejected(f"{METADATA_NAME} is not a JSON object")
                metadata = loaded
            _check_task_id(metadata, expected_task_id)
            arrays: dict[str, np.ndarray] = {}
            for name in (DENOISED_NAME, NOISE_NAME):
                if name not in names:
                    continue
                with zf.open(name) as stream:
                    reader = _CountingReader(stream, budget, npy_limit)
                    arrays[name] = _read_npy(reader, name, shape)
                expected_sha = _sha_for(metadata, name)
                if expected_sha is not None and expected_sha != reader.sha256.hexdigest():
                    raise ArchiveRejected(f"{name}: sha256 does not match metadata.json")
                if input_peak is not None:
                    check_plausible(arrays[name], name, input_peak=input_peak, factor=max_factor)
                if keep is not None:
                    arrays[name] = keep(name, arrays[name])
    except zipfile.BadZipFile as exc:
        # zipfile verifies each entry's CRC-32 when it is read to the end.
        raise ArchiveRejected(f"{path.name} is corrupt ({exc})") from None
    except UNREADABLE as exc:
        raise ArchiveRejected(f"{path.name} cannot be read ({exc})") from None
    return ResultArrays(
        denoised=arrays[DENOISED_NAME],
        noise=arrays.get(NOISE_NAME),
        algorithm=_algorithm(metadata),
    )


def _check_task_id(metadata: Mapping[str, Any], expected: str | None) -> None:
    if expected is None or "task_id" not in metadata:
        return  # metadata.json and its task_id are optional (REMOTE_PROTOCOL.md)
    named = metadata["task_id"]
    if not isinstance(named, str) or named.strip().lower() != expected.lower():
        shown = named[:64] if isinstance(named, str) else type(named).__name__
        raise ArchiveRejected(
            f"{METADATA_NAME} names task {shown!r}, not {expected}: the result of another task"
        )


def verify_zip(path: Path, *, max_uncompressed_bytes: int | None = None) -> None:
    """Check that a downloaded file is a complete zip whose entries pass their CRC-32 test.

    Decompresses every entry without writing anything; with a limit, declared sizes are checked
    first so that a bomb is refused before any work.
    """
    try:
        with _open_zip(path) as zf:
            infos = zf.infolist()
            if not infos:
                raise ArchiveRejected(f"{path.name} is an empty archive")
            if max_uncompressed_bytes is not None:
                declared = sum(info.file_size for info in infos)
                if declared > max_uncompressed_bytes:
                    raise ArchiveRejected(
                        f"{path.name} declares {declared} uncompressed bytes, "
                        f"over the limit of {max_uncompressed_bytes}"
                    )
            bad = zf.testzip()
    except zipfile.BadZipFile as exc:
        raise ArchiveRejected(f"{path.name} is corrupt ({exc})") from None
    except UNREADABLE as exc:
        raise ArchiveRejected(f"{path.name} cannot be read ({exc})") from None
    if bad is not None:
        raise ArchiveRejected(f"{path.name}: entry {bad!r} fails its CRC check")
