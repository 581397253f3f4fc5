"""One local Ray cluster for the whole test session (ray.init costs seconds; share it)."""

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

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        # A private cluster: with no address Ray would join any `ray start` on this host.
        address="local",
        namespace=NAMESPACE,
        include_dashboard=False,
        resources={FILTER_RESOURCE: FILTER_WORKERS},
        logging_level=logging.WARNING,
        _node_ip_address="127.0.0.1",  # test traffic stays on loopback
        log_to_driver=True,
    )
    yield
    ray.shutdown()
