"""FilterWorker: one post-filter over a volume read zero-copy from the object store, and its series.

Placed by the ``filter_worker`` custom resource on the nodes that offer it (actors/filter_pool.py),
so filtering can run on other nodes and never takes the CPUs the pipeline's own actors need. The
filtered volume never travels back through the object store; the worker encodes its filter's
DICOM series itself, so the series of several filters are made in parallel. On the gateway's
node it writes the files straight into the output directory (the single-node fast path); on
another node it returns them encoded, in one buffer, and the Unpacker writes them on the gateway:
no node needs the gateway's file system (issue 12).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import ray

from actors.plasma import release_pages
from petray.imaging.derive import SeriesJob, SliceTemplate
from petray.imaging.filters import FilterSpec
from petray.stages.unpack import FilteredSeries, filter_series


@ray.remote(num_cpus=0, max_restarts=-1)
class FilterWorker:
    def __init__(self) -> None:
        self._jobs = 0

    def filter_series(
        self,
        denoised: np.ndarray,
        noise: np.ndarray | None,
        templates: Sequence[SliceTemplate],
        spec: FilterSpec,
        spacing_zyx: Sequence[float],
        job: SeriesJob,
        writer_node: str,
        body_threshold_bqml: float | None = None,
    ) -> FilteredSeries:
        """Filter the volume with ``spec`` and make ``job``'s series.

        On ``writer_node`` (the gateway's), write the files and return their count; elsewhere
        return them encoded for the gateway to write. With ``body_threshold_bqml``, also the
        filtered volume's quantitative metrics (issue 15), measured here where the volume is
        rather than moved anywhere for it.
        """
        # ``denoised`` arrives as a read-only view of the object store's copy (no copy made).
        self._jobs += 1
        return filter_series(
            denoised,
            noise,
            templates,
            spec,
            spacing_zyx,
            job,
            write=ray.get_runtime_context().get_node_id() == writer_node,
            body_threshold_bqml=body_threshold_bqml,
            # Read slab by slab, the shared volumes leave this process's memory as they are
            # consumed: it then holds only its filter's own copy (issue 13).
            done_with=release_pages,
        )

    def describe(self, volume: np.ndarray) -> dict[str, object]:
        """How ``volume`` arrived in this worker; exists only so the benchmark can prove zero-copy.

        Never called by the pipeline. A volume read from the object store is a read-only view
        whose buffer lies in this process's mapping of the plasma store, not a private copy.
        """
        base = volume.base
        return {
            "pid": os.getpid(),
            "address": int(volume.__array_interface__["data"][0]),
            "nbytes": int(volume.nbytes),
            "writeable": bool(volume.flags.writeable),
            "owndata": bool(volume.flags.owndata),
            "base_type": f"{type(base).__module__}.{type(base).__qualname__}",
        }

    def jobs(self) -> int:
        """Filters run by this incarnation (tests check that a lost node's job alone reran)."""
        return self._jobs

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()
