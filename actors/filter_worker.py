"""FilterWorker: one post-filter over a volume read zero-copy from the object store.

Placed by the ``filter_worker`` custom resource, so filtering can run on other nodes and never
takes the CPUs the pipeline's own actors need.
"""

from __future__ import annotations

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

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()
