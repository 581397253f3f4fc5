"""Deflate on several threads (petray.service.deflate): one valid raw deflate stream whatever
the chunking, as small as one compressor's, and what zipfile writes with it reads back whole."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from petray.service.archive import write_upload_archive
from petray.service.deflate import WINDOW, ParallelDeflate

CHUNK = 64 * 1024


def _inflate(stream: bytes) -> bytes:
    inflater = zlib.decompressobj(-15)
    data = inflater.decompress(stream) + inflater.flush()
    assert inflater.eof  # one stream, properly ended by its last chunk
    return data


def _deflate(data: bytes, *, piece: int, threads: int = 2, level: int = 1) -> bytes:
    compressor = ParallelDeflate(level, threads=threads, chunk=CHUNK)
    out = [compressor.compress(data[at : at + piece]) for at in range(0, len(data), piece)]
    out.append(compressor.flush())
    return b"".join(out)


@pytest.mark.parametrize("size", [0, 1, WINDOW - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345])
@pytest.mark.parametrize("piece", [1000, CHUNK, 3 * CHUNK])
def test_any_data_in_any_pieces_inflates_back(size: int, piece: int) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)  # half noise, half zeros
    assert _inflate(_deflate(data, piece=piece)) == data


def test_chunks_reach_back_across_their_seams() -> None:
    # A 16 KiB random block repeated: every chunk but the first is all back references into
    # the one before, found only because each chunk is primed with its predecessor's window.
    block = os.urandom(WINDOW // 2)
    data = block * 64
    ours = _deflate(data, piece=CHUNK)
    single = zlib.compressobj(1, zlib.DEFLATED, -15)
    theirs = single.compress(data) + single.flush()
    assert _inflate(ours) == data
    assert len(ours) < 1.1 * len(theirs)
    assert len(ours) < len(data) / 10


def test_a_flushed_stream_takes_no_more_data() -> None:
    compressor = ParallelDeflate(1, chunk=CHUNK)
    compressor.compress(b"abc")
    compressor.flush()
    with pytest.raises(ValueError, match="flushed"):
        compressor.compress(b"more")


def test_the_upload_archive_reads_back_whole_with_its_crc(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    volume = np.round(rng.gamma(2.0, 500.0, size=(37, 64, 64))).astype(np.float32)
    volume[:, :10] = 0  # compressible, as air around a patient
    archive = tmp_path / "t.zip"
    write_upload_archive(
        archive,
        task_id="t",
        volume=volume,
        voxel_spacing_zyx=(3.0, 2.0, 2.0),
        metadata={"client_id": "c"},
        compresslevel=1,
    )
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None  # every entry's CRC matches its inflated bytes
        info = zf.getinfo("t.npy")
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.compress_size < info.file_size
        with zf.open("t.npy") as npy:
            assert np.array_equal(np.load(npy), volume)
