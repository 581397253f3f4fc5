"""One local Ray cluster per test process (ray.init costs seconds; share it). Each xdist worker
has its own, on loopback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

FILTER_WORKERS = 2


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    from actors.names import FILTER_RESOURCE, NAMESPACE
    from actors.ray_loopback import loopback_only

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Test traffic stays on loopback: Ray ignores _node_ip_address="127.0.0.1" on its own and
    # would listen on the host's address (actors/ray_loopback.py).
    with loopback_only():
        ray.init(
            # A private cluster: with no address Ray would join any `ray start` on this host.
            address="local",
            namespace=NAMESPACE,
            include_dashboard=False,
            resources={FILTER_RESOURCE: FILTER_WORKERS},
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    yield
    ray.shutdown()
