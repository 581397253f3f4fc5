"""A series encoded on one node and written on another is the series written in place (issue 12).

Ray-free: the encoding and the writer are pure functions; the cluster scenario
(tests/test_cluster.py) runs them across real Ray nodes.
"""

from __future__ import annotations

import pickle
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from petray.errors import PermanentError
from petray.imaging.derive import (
    EncodedSeries,
    SeriesJob,
    encode_series,
    prepare_templates,
    write_encoded,
    write_series,
)
from tests.support.peers import write_pet_series

UID_ROOT = "1.2.826.0.1.3680043.10.1299"
SLICES, ROWS, COLS = 4, 12, 10
NOW = datetime(2026, 1, 2, 3, 4, 5)


def _job(outdir: Path) -> SeriesJob:
    return SeriesJob(
        outdir=outdir,
        series_instance_uid=f"{UID_ROOT}.77",
        series_number=801,
        series_description="PET Gauss 5mm",
        derivation_description="petray test",
        uid_root=UID_ROOT,
    )


@pytest.fixture
def templates(tmp_path: Path) -> tuple:
    return prepare_templates(write_pet_series(tmp_path / "src", SLICES, rows=ROWS, cols=COLS))


def _volume() -> np.ndarray:
    return np.random.default_rng(3).random((SLICES, ROWS, COLS), dtype=np.float32) * 1000


def test_encoded_series_written_elsewhere_equals_series_written_in_place(
    tmp_path: Path, templates: tuple
) -> None:
    in_place = write_series(_volume(), templates, _job(tmp_path / "local"), now=NOW)
    encoded = encode_series(_volume(), templates, _job(tmp_path / "unused"), now=NOW)
    # Through pickle, as through Ray's object store (the array goes out of band).
    encoded = pickle.loads(pickle.dumps(encoded, protocol=5))
    written = write_encoded(encoded, tmp_path / "gateway")

    assert [p.name for p in written] == [p.name for p in in_place]
    for local, remote in zip(in_place, written, strict=True):
        assert local.read_bytes() == remote.read_bytes()
    assert encoded.nbytes == sum(p.stat().st_size for p in in_place)
    assert not (tmp_path / "unused").exists()  # encoding writes nothing on the worker's node


def test_a_shorter_retry_removes_the_files_of_a_longer_attempt(
    tmp_path: Path, templates: tuple
) -> None:
    outdir = tmp_path / "gateway"
    write_encoded(encode_series(_volume(), templates, _job(outdir), now=NOW), outdir)
    (outdir / "00009.dcm").write_bytes(b"stale")
    write_encoded(encode_series(_volume(), templates, _job(outdir), now=NOW), outdir)
    assert sorted(p.name for p in outdir.iterdir()) == [f"{i:05d}.dcm" for i in range(SLICES)]


def test_an_encoded_series_cannot_name_a_path(tmp_path: Path) -> None:
    hostile = EncodedSeries(("../escape.dcm",), (0, 3), np.frombuffer(b"abc", dtype=np.uint8))
    with pytest.raises(PermanentError):
        write_encoded(hostile, tmp_path / "out")
    assert not (tmp_path / "escape.dcm").exists()


def test_offsets_must_describe_the_buffer() -> None:
    with pytest.raises(ValueError, match="offsets"):
        EncodedSeries(("00000.dcm",), (0, 5), np.zeros(3, dtype=np.uint8))
