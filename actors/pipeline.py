"""The one place that builds and wires the pipeline's actors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray

from actors import names
from actors.compilator import CompilatorActor
from actors.downloader import DownloaderActor
from actors.filter_pool import remove_pool, sync_pool
from actors.metrics import MetricsActor
from actors.packer import PackerActor
from actors.placement import gateway_node_id, on_node
from actors.retention import RetentionActor
from actors.store_scp import StoreScpActor
from actors.store_scu import StoreScuActor
from actors.unpacker import UnpackerActor
from actors.uploader import UploaderActor
from actors.validator import ValidatorActor
from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.settings import Settings
from petray.stages.pipeline import PIPELINE_ACTORS
from petray.tasks import unfinished_tasks

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 120

# The class of each actor the pipeline table names (petray/stages/pipeline.py).
ACTOR_CLASSES: dict[str, Any] = {
    names.STORE_SCP: StoreScpActor,
    names.COMPILATOR: CompilatorActor,
    names.VALIDATOR: ValidatorActor,
    names.PACKER: PackerActor,
    names.UPLOADER: UploaderActor,
    names.DOWNLOADER: DownloaderActor,
    names.UNPACKER: UnpackerActor,
    names.STORE_SCU: StoreScuActor,
}
if set(ACTOR_CLASSES) != set(PIPELINE_ACTORS):
    raise RuntimeError("actors/pipeline.py: ACTOR_CLASSES must have exactly the table's actors")
# Started first, so the DICOM port opens before the other stages start (see _build).
LISTENING_FIRST = (names.COMPILATOR, names.STORE_SCP)


@dataclass
class Pipeline:
    handles: dict[str, Any]
    listener: dict[str, Any]
    resumed: int

    def stop(self) -> None:
        scps = [h for name, h in self.handles.items() if names.is_store_scp(name)]
        ray.get([scp.stop.remote() for scp in scps], timeout=30)
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        remove_pool()  # including workers created since start for nodes that joined


def _named(actor_class: Any, name: str, **options: Any) -> Any:
    # Every actor built here except the FilterWorkers runs on the gateway's node (issue 12).
    return actor_class.options(
        name=name, namespace=names.NAMESPACE, **on_node(gateway_node_id()), **options
    )


def build_pipeline(settings: Settings) -> Pipeline:
    """Start every actor, rebuild state from the database, resume unfinished tasks, listen.

    The DICOM port opens part-way; this returns once every actor has started. A failure
    part-way kills the actors already created, so a second attempt can reuse their names
    instead of finding them taken.
    """
    handles: dict[str, Any] = {}
    try:
        return _build(settings, handles)
    except BaseException:
        for handle in handles.values():
            ray.kill(handle, no_restart=True)
        raise


def _build(settings: Settings, handles: dict[str, Any]) -> Pipeline:
    # The DICOM port opens first (issue 13: a gateway listens within seconds of its start).
    # It needs only the Compilator, whose rebuild is awaited so that the SCP never listens
    # before it, and the SCP; on two cores, starting the other ten worker processes at the
    # same time would delay it by as long again.
    processes = settings.dicom_processes
    handles[names.COMPILATOR] = _named(CompilatorActor, names.COMPILATOR).remote(settings)
    handles[names.STORE_SCP] = _named(StoreScpActor, names.STORE_SCP).remote(settings, 0, processes)
    ray.get(handles[names.COMPILATOR].start.remote(), timeout=START_TIMEOUT_S)
    # The first SCP process checks that the port is free and binds it; its siblings then
    # share it (issue 13).
    listener = ray.get(handles[names.STORE_SCP].start.remote(), timeout=START_TIMEOUT_S)
    for index in range(1, processes):
        name = names.store_scp_name(index)
        handles[name] = _named(StoreScpActor, name).remote(settings, index, processes)

    # Then the stages. A series completed meanwhile is committed in validating before the
    # Validator exists: the Dispatcher finds no actor, and the Validator takes the task up as
    # it starts, as every stage actor does with its own stage's tasks (and on restarts).
    # The Unpacker keeps the filter worker pool following the cluster's capacity.
    for name in PIPELINE_ACTORS:
        if name not in LISTENING_FIRST:
            handles[name] = _named(ACTOR_CLASSES[name], name).remote(settings)
    # As many FilterWorkers as the alive nodes offer filter_worker slots, placed on them; none
    # yet is no reason not to start (the Unpacker waits for capacity with a clear reason).
    for worker in sync_pool().workers:
        handles[worker.name] = worker.handle
    ray.get([h.__ray_ready__.remote() for h in handles.values()], timeout=START_TIMEOUT_S)
    engine = make_engine(settings.resolved_database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            pending = unfinished_tasks(session=session)
    finally:
        engine.dispose()
    if pending:
        logger.info("resuming %d unfinished tasks", len(pending))
    handles[names.METRICS] = _named(MetricsActor, names.METRICS).remote(settings)
    handles[names.METRICS].start.remote()
    handles[names.RETENTION] = _named(RetentionActor, names.RETENTION).remote(settings)
    return Pipeline(handles=handles, listener=listener, resumed=len(pending))
