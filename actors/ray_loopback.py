"""A local Ray that listens on loopback only (issue 9: Ray listened on every interface).

Ray 2.60 ignores ``ray.init(_node_ip_address="127.0.0.1")``: ``services.resolve_ip_for_localhost``
swaps a loopback address for the host's "remotely reachable" one, and the GCS, the raylet, the
dashboard agent, its metrics exporter and the runtime-env agent then bind that address or all
interfaces (``::``, ``0.0.0.0``). The one switch Ray reads is ``ENABLE_RAY_CLUSTER``
(environment ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, on by default on Linux): off, the node's
address is 127.0.0.1 and every gRPC and HTTP server of the node binds it, as Ray does by default
on macOS and Windows. Checked by tests/test_loopback.py, which lists the run's listening sockets.

Only for a Ray this process starts itself; a cluster (``RAY_ADDRESS``) keeps its own addresses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray._private.ray_constants as ray_constants  # the switch has no public API

CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "[::]:"


@contextmanager
def loopback_only() -> Iterator[None]:
    """Around ``ray.init`` of a local Ray: the driver (read at call time) and every process Ray
    starts (environment, inherited by the raylet and so by its workers) use loopback.
    """
    previous_env = os.environ.get(CLUSTER_SWITCH)
    previous = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
        if previous_env is None:
            del os.environ[CLUSTER_SWITCH]
        else:
            os.environ[CLUSTER_SWITCH] = previous_env


def keep_serve_replica_on_loopback() -> bool:
    """In a Serve replica on a loopback-only node, bind its inter-deployment gRPC server to
    127.0.0.1 too; returns whether it applies.

    Ray 2.60's replica binds that server to ``[::]:0`` whatever the node's address (replica.py,
    ``_on_initialized``), with no setting to change it: every interface would reach the
    replica's ASGI service. Called from the replica while the app is built, which Ray does
    before it starts that server. Other nodes' replicas (a cluster) are left as they are.
    """
    import ray
    import ray.serve._private.replica as replica  # the bind has no public API

    if ray.util.get_node_ip_address() != LOOPBACK:  # type: ignore[no-untyped-call]
        return False
    original: Any = replica.add_port_to_grpc_server  # type: ignore[attr-defined]
    if getattr(original, "petray_loopback", False):
        return True

    def add_port_on_loopback(server: object, address: str) -> int:
        if address.startswith(ALL_INTERFACES):
            address = LOOPBACK + ":" + address.removeprefix(ALL_INTERFACES)
        port: int = original(server, address)
        return port

    add_port_on_loopback.petray_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_loopback  # type: ignore[attr-defined]
    return True
