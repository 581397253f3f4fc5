"""FilterWorker: one post-filter over a volume read zero-copy from the object store.

Placed by the ``filter_worker`` custom resource, so filtering can run on other nodes and never
takes the CPUs the pipeline's own actors need.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import ray

from petray.filters import FilterSpec, apply_post_filter


@ray.remote(num_cpus=0, max_restarts=-1)
class FilterWorker:
    def apply(
        self,
        denoised: np.ndarray,
        noise: np.ndarray | None,
        spec: FilterSpec,
        spacing_zyx: Sequence[float],
    ) -> np.ndarray:
        # ``denoised`` arrives as a read-only view of the object store's copy (no copy made).
        return apply_post_filter(denoised, noise, spec, spacing_zyx)

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
