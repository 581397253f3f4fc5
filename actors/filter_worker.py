"""FilterWorker: one post-filter over a volume read zero-copy from the object store, and its series.

Placed by the ``filter_worker`` custom resource, so filtering can run on other nodes and never
takes the CPUs the pipeline's own actors need. Each worker also writes the DICOM series of the
filter it ran: the filtered volume never travels back through the object store, and the series
of several filters are written in parallel. On a Ray cluster the workers therefore write into
the output directory under PETRAY_HOME, which must be shared storage mounted at the same path on
every node (cluster.yaml).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import ray

from petray.derive import SeriesJob, SliceTemplate, write_series
from petray.filters import FilterSpec, apply_post_filter


@ray.remote(num_cpus=0, max_restarts=-1)
class FilterWorker:
    def filter_and_write(
        self,
        denoised: np.ndarray,
        noise: np.ndarray | None,
        templates: Sequence[SliceTemplate],
        spec: FilterSpec,
        spacing_zyx: Sequence[float],
        job: SeriesJob,
    ) -> int:
        """Filter the volume with ``spec``, write it as ``job``'s series; return the file count."""
        # ``denoised`` arrives as a read-only view of the object store's copy (no copy made).
        filtered = apply_post_filter(denoised, noise, spec, spacing_zyx)
        return len(write_series(filtered, templates, job))

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

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()
