"""Where the gateway's actors run on a Ray cluster (issue 12).

``num_cpus=0`` does not pin an actor: Ray places an actor that asks for nothing on any node, and
on a real cluster the DICOM listener, the database writers, the StoreSCU and the HTTP replica
each wandered to worker nodes, where the SCP listens on the wrong host and PostgreSQL at
127.0.0.1, the service URL and the PACS are out of reach. Every actor except the FilterWorkers
is therefore pinned to the gateway's node: the node of the driver that builds the pipeline
(``petray start`` runs on the head, cluster.yaml). Pinning needs no cluster configuration, so a
single-node gateway and a test's shared Ray behave exactly as before.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# Every Ray node carries its own id under this label (Ray 2.60); Serve replicas cannot take a
# scheduling strategy, only resources and a label selector.
NODE_ID_LABEL = "ray.io/node-id"


def gateway_node_id() -> str:
    """The node this process runs on: called by the driver, the gateway's node."""
    return str(ray.get_runtime_context().get_node_id())


def on_node(node_id: str) -> dict[str, Any]:
    """Actor options that keep an actor, and every restart of it, on ``node_id``.

    Hard affinity (``soft=False``): an actor that cannot run on the gateway's node must wait
    for it, never start elsewhere.
    """
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}


def replica_on_node(node_id: str) -> dict[str, Any]:
    """Serve ``ray_actor_options`` keeping the HTTP replica on ``node_id``."""
    return {"label_selector": {NODE_ID_LABEL: node_id}}


def actor_node_id(handle: Any) -> str | None:
    """The node an actor runs on, from the GCS actor table (no dashboard needed)."""
    from ray._private import state

    info = state.actors(actor_id=handle._actor_id.hex())
    node = (info.get("Address") or {}).get("NodeID")
    return str(node) if node else None
