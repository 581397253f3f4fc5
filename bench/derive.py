"""Offline timing of rebuilding DICOM series from filtered volumes (issue 4, unpacking stage).

    .venv/bin/python -m bench.derive [--series big|small] [--filters 3] [--profile]

Uses the series cached by ``bench.ingest`` (645 x 440x440 by default), loads it once with
``petray.imaging.volume.load_series_volume``, then times
``petray.imaging.derive.prepare_templates`` (once) and
``petray.imaging.derive.write_series`` for ``--filters`` scaled copies of the volume, one after the
other
in this process (the filters
themselves are not timed: that is scipy's work, not the writer's). Output goes to a temporary
directory under /tmp that is removed afterwards. ``--profile`` runs cProfile over the writes and
prints the top entries by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.ingest import SERIES, cached_series
from petray.imaging.derive import SeriesJob, prepare_templates, write_series
from petray.imaging.volume import load_series_volume

UID_ROOT = "1.2.826.0.1.3680043.10.1299"
PROFILE_TOP = 25


def _series_uid(index: int) -> str:
    return f"{UID_ROOT}.9.{index + 1}"


def run(series: str, filters: int, profile: bool) -> None:
    cached = cached_series(series)
    sources = sorted(cached.directory.glob("*.dcm"))
    started = time.perf_counter()
    loaded = load_series_volume(sources)
    print(f"loaded {loaded.shape} in {time.perf_counter() - started:.1f} s")
    volumes = [(loaded.data * np.float32(1.0 - 0.1 * k)) for k in range(filters)]
    outroot = Path(tempfile.mkdtemp(prefix="petray-bench-derive-", dir="/tmp"))
    profiler = cProfile.Profile() if profile else None
    try:
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        templates = prepare_templates(loaded.slice_paths)
        prepared = time.perf_counter() - started
        per_series: list[float] = []
        for k, volume in enumerate(volumes):
            t0 = time.perf_counter()
            job = SeriesJob(
                outdir=outroot / f"series-{k}",
                series_instance_uid=_series_uid(k),
                series_number=1001 + k,
                series_description=f"bench filter {k}",
                derivation_description="petray bench",
                uid_root=UID_ROOT,
            )
            written = write_series(volume, templates, job)
            per_series.append(time.perf_counter() - t0)
            assert len(written) == loaded.shape[0]
        if profiler is not None:
            profiler.disable()
        total = time.perf_counter() - started
    finally:
        shutil.rmtree(outroot, ignore_errors=True)
    files = filters * loaded.shape[0]
    print(
        f"{filters} series x {loaded.shape[0]} files: {total:.2f} s "
        f"({1000 * total / files:.2f} ms per file); templates {prepared:.2f} s, per series "
        + ", ".join(f"{s:.2f} s" for s in per_series)
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(PROFILE_TOP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", choices=sorted(SERIES), default="big")
    parser.add_argument("--filters", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    run(args.series, args.filters, args.profile)


if __name__ == "__main__":
    main()
