"""Actor names and the stage each actor owns: the one place these strings live."""

from __future__ import annotations

from petray.domain import Stage

NAMESPACE = "petray"

STORE_SCP = "petray.store_scp"
COMPILATOR = "petray.compilator"
VALIDATOR = "petray.validator"
PACKER = "petray.packer"
UPLOADER = "petray.uploader"
DOWNLOADER = "petray.downloader"
UNPACKER = "petray.unpacker"
STORE_SCU = "petray.store_scu"
# Not a pipeline stage: applies the retention policy on a timer (issue 10).
RETENTION = "petray.retention"
# Not a pipeline stage: sets the Prometheus gauges (issue 10).
METRICS = "petray.metrics"
FILTER_WORKER_PREFIX = "petray.filter_worker."

# Custom resource that bounds CPU-heavy filtering; worker nodes advertise it (cluster.yaml).
FILTER_RESOURCE = "filter_worker"

STAGE_ACTORS: dict[Stage, str] = {
    Stage.VALIDATING: VALIDATOR,
    Stage.PACKING: PACKER,
    Stage.UPLOADING: UPLOADER,
    Stage.PROCESSING: UPLOADER,  # the Uploader watches the processing deadline
    Stage.DOWNLOADING: DOWNLOADER,
    Stage.UNPACKING: UNPACKER,
    Stage.SENDING: STORE_SCU,
}

PIPELINE_ACTORS: tuple[str, ...] = (
    STORE_SCP,
    COMPILATOR,
    VALIDATOR,
    PACKER,
    UPLOADER,
    DOWNLOADER,
    UNPACKER,
    STORE_SCU,
)


# Node ids are random: a prefix this long tells a cluster's nodes apart in a readable name.
NODE_TAG_LENGTH = 12


def filter_worker_name(node_id: str, slot: int) -> str:
    """The FilterWorker of ``node_id``'s ``slot``-th ``filter_worker`` slot (issue 12)."""
    return f"{FILTER_WORKER_PREFIX}{node_id[:NODE_TAG_LENGTH]}.{slot}"
