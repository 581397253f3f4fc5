"""The volume built while the slices arrive (issue 13): the same volume as reading the files,
and given up, never wrong, whenever it cannot hold the whole series."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy.orm import Session, sessionmaker

from petray.demo.synth import make_pet_series, write_series
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.dicom.scp import IngestLimits, StoreService
from petray.errors import PermanentError
from petray.imaging.volume import VolumeBuilder, load_series_volume, stored_slice
from petray.site.siteconfig import Listener
from petray.stages.prebuild import PreparedVolume, VolumeAssembler
from tests.support.peers import LOOPBACK, free_port, run_storescu

MiB = 2**20


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    datasets = make_pet_series(slices=20, rows=24, cols=20, seed=5, vendor="philips")
    paths = write_series(datasets, tmp_path_factory.mktemp("series"))
    # A PACS forwards in any order: arrival order is not slice order.
    return [paths[i] for i in np.random.default_rng(3).permutation(len(paths))]


def _assert_same(built: object, read: object) -> None:
    assert built is not None and read is not None
    assert built.slice_paths == read.slice_paths  # type: ignore[attr-defined]
    assert built.spacing_zyx == read.spacing_zyx  # type: ignore[attr-defined]
    np.testing.assert_array_equal(built.positions, read.positions)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(built.data, read.data)  # type: ignore[attr-defined]


@pytest.mark.parametrize("expected", [None, 3, 20, 25])
def test_built_one_slice_at_a_time_it_is_the_volume_read_from_the_files(
    series: list[Path], expected: int | None
) -> None:
    # Without a declared count, or a wrong one, the buffer grows; the volume is the same.
    builder = VolumeBuilder(expected)
    for path in series:
        builder.add(path)
    assert builder.count == len(series)
    _assert_same(builder.finish(), load_series_volume(series))


def test_a_slice_of_another_size_is_named(series: list[Path], tmp_path: Path) -> None:
    other = write_series(make_pet_series(slices=2, rows=16, cols=16, seed=6), tmp_path)
    builder = VolumeBuilder(4)
    builder.add(series[0])
    with pytest.raises(PermanentError, match="inconsistent image size: 16x16"):
        builder.add(other[0])


def test_the_assembler_gives_the_volume_of_every_slice_fed_in_batches(
    series: list[Path],
) -> None:
    assembler = VolumeAssembler(64 * MiB)
    names = [str(p) for p in series]
    assembler.feed("t", names[:7], expected=20, first=True)
    assembler.feed("t", names[7:], expected=20, first=False)
    assert assembler.nbytes == 20 * 24 * 20 * 4
    _assert_same(assembler.finish("t"), load_series_volume(series))
    assert assembler.nbytes == 0 and assembler.finish("t") is None


def test_a_task_not_seen_from_its_first_slice_is_not_built(series: list[Path]) -> None:
    # The Compilator restarted mid-series: a volume of the later slices only would be wrong.
    assembler = VolumeAssembler(64 * MiB)
    assembler.feed("t", [str(p) for p in series[5:]], expected=20, first=False)
    assert assembler.building() == [] and assembler.finish("t") is None


def test_an_unreadable_slice_gives_the_task_up(series: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM at all")
    assembler = VolumeAssembler(64 * MiB)
    assembler.feed("t", [str(series[0]), str(broken)], expected=20, first=True)
    assembler.feed("t", [str(p) for p in series[1:]], expected=20, first=False)
    assert assembler.finish("t") is None  # the Packer reads the files and names the file


def test_over_the_budget_a_task_is_given_up_and_its_memory_freed(series: list[Path]) -> None:
    per_volume = 20 * 24 * 20 * 4
    assembler = VolumeAssembler(per_volume + per_volume // 2)
    assembler.feed("a", [str(series[0])], expected=20, first=True)
    assembler.feed("b", [str(series[0])], expected=20, first=True)
    assert assembler.building() == ["a"] and assembler.nbytes == per_volume
    assembler.feed("b", [str(p) for p in series[1:]], expected=20, first=False)
    assert assembler.finish("b") is None


def test_off_when_the_budget_is_zero(series: list[Path]) -> None:
    assembler = VolumeAssembler(0)
    assembler.feed("t", [str(p) for p in series], expected=20, first=True)
    assert assembler.finish("t") is None


def test_dropped_and_cleared_tasks_are_forgotten(series: list[Path]) -> None:
    assembler = VolumeAssembler(64 * MiB)
    for task in ("a", "b"):
        assembler.feed(task, [str(series[0])], expected=20, first=True)
    assembler.drop("a")
    assert assembler.building() == ["b"]
    assembler.clear()
    assert assembler.building() == [] and assembler.nbytes == 0


def test_a_prepared_volume_is_used_only_for_exactly_its_files(
    series: list[Path], tmp_path: Path
) -> None:
    prepared = PreparedVolume.of(load_series_volume(series), ref=None)
    names = [str(p) for p in series]
    assert prepared.is_of(list(reversed(names)))
    assert not prepared.is_of(names[:-1])
    assert not prepared.is_of([*names[:-1], str(tmp_path / "other.dcm")])
    assert not prepared.is_of([*names, names[0]])


@dataclass
class _Collected:
    received: list[ReceivedInstance] = field(default_factory=list)


@pytest.mark.parametrize(
    ("propose", "parsed_once"),
    [([], True), (["--propose-implicit"], True), (["--propose-deflated"], False)],
    ids=["explicit", "implicit", "deflated"],
)
def test_what_the_scp_learnt_of_each_slice_builds_the_volume_read_from_its_files(
    tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
    propose: list[str],
    parsed_once: bool,
) -> None:
    # Signed and unsigned pixels, with and without an intercept, Philips counts with their
    # per-slice factor: the Compilator reads only the pixel values, where the SCP found them.
    datasets = make_pet_series(slices=12, rows=20, cols=18, seed=9, vendor="philips")
    for k, ds in enumerate(datasets):
        if k % 3 == 1:
            ds.RescaleIntercept = "-2.5"
        if k % 2:
            ds.PixelRepresentation = 0
            ds.PixelData = np.abs(ds.pixel_array).astype("<u2").tobytes()
    paths = write_series(datasets, tmp_path / "sent")
    root = tmp_path / "instances"
    root.mkdir()
    store = InstanceStore(root, sqlite_sessions, min_free_bytes=0, fsync=False)
    collected = _Collected()
    service = StoreService(
        store, sqlite_sessions, on_instance=collected.received.append, limits=IngestLimits()
    )
    port = free_port()
    server = service.start(Listener(ae_title="PETRAY", port=port, bind=LOOPBACK))
    try:
        result = run_storescu(paths, port=port, called_ae="PETRAY", extra_args=propose)
        assert result.returncode == 0, result.stderr
    finally:
        server.shutdown()
    received = collected.received
    assert len(received) == len(paths)
    assert all((r.stored is not None) == parsed_once for r in received)
    builder = VolumeBuilder(len(received))
    for instance in received:
        builder.add(Path(instance.path), instance.stored)
    _assert_same(builder.finish(), load_series_volume([Path(r.path) for r in received]))


def test_a_stored_slice_whose_file_is_cut_short_is_named(
    series: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(series[0])
    raw = series[0].read_bytes()
    pixels = bytes(ds.PixelData)
    stored = stored_slice(ds, ds.file_meta.TransferSyntaxUID, raw.rindex(pixels))
    assert stored is not None
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: -len(pixels) // 2])
    with pytest.raises(PermanentError, match=r"cut\.dcm"):
        VolumeBuilder(2).add(cut, stored)
