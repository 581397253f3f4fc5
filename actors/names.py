"""Actor names and the stage each actor owns: the one place these strings live."""

from __future__ import annotations

from collections.abc import Iterable

# The pipeline's actors are named in its table (petray/stages/pipeline.py).
from petray.stages.pipeline import (
    COMPILATOR,
    DOWNLOADER,
    PACKER,
    PIPELINE_ACTORS,
    STAGE_ACTORS,
    STORE_SCP,
    STORE_SCU,
    UNPACKER,
    UPLOADER,
    VALIDATOR,
)

NAMESPACE = "petray"

# Not a pipeline stage: applies the retention policy on a timer (issue 10).
RETENTION = "petray.retention"
# Not a pipeline stage: sets the Prometheus gauges (issue 10).
METRICS = "petray.metrics"
FILTER_WORKER_PREFIX = "petray.filter_worker."

# Custom resource that bounds CPU-heavy filtering; worker nodes advertise it (cluster.yaml).
FILTER_RESOURCE = "filter_worker"

__all__ = [
    "COMPILATOR",
    "DOWNLOADER",
    "PACKER",
    "PIPELINE_ACTORS",
    "STAGE_ACTORS",
    "STORE_SCP",
    "STORE_SCU",
    "UNPACKER",
    "UPLOADER",
    "VALIDATOR",
]


def store_scp_name(index: int) -> str:
    """The Store SCP process ``index`` of those sharing the DICOM port (issue 13); the first
    keeps the pipeline table's name, which health, metrics and the console look for."""
    return STORE_SCP if index == 0 else f"{STORE_SCP}.{index + 1}"


def is_store_scp(name: str) -> bool:
    return name == STORE_SCP or name.startswith(f"{STORE_SCP}.")


def store_scp_siblings_in(names: Iterable[str]) -> list[str]:
    """The Store SCP processes besides the first among ``names``, sorted."""
    return sorted(n for n in names if is_store_scp(n) and n != STORE_SCP)


def filter_workers_in(names: Iterable[str]) -> list[str]:
    """The FilterWorkers among ``names``, sorted."""
    return sorted(n for n in names if n.startswith(FILTER_WORKER_PREFIX))


# Node ids are random: a prefix this long tells a cluster's nodes apart in a readable name.
NODE_TAG_LENGTH = 12


def filter_worker_name(node_id: str, slot: int) -> str:
    """The FilterWorker of ``node_id``'s ``slot``-th ``filter_worker`` slot (issue 12)."""
    return f"{FILTER_WORKER_PREFIX}{node_id[:NODE_TAG_LENGTH]}.{slot}"
