"""PackerActor: the series as one float32 volume, de-identified into ``{task_id}.zip``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray
from pydicom import dcmread

from actors.names import COMPILATOR, NAMESPACE
from actors.plasma import release_pages
from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.imaging.volume import load_series_volume
from petray.settings import Settings
from petray.site.siteconfig import effective_client_id
from petray.stages.pack import pack
from petray.stages.prebuild import PreparedVolume
from petray.stages.records import Validated
from petray.task_files import TaskFiles
from petray.tasks import get_task, instance_paths

logger = logging.getLogger(__name__)

# Asking the Compilator for the volume it built; past this the files are read instead.
TAKE_VOLUME_TIMEOUT_S = 60.0


@ray.remote(num_cpus=0, max_restarts=-1)
class PackerActor(StageWorker):
    stage = Stage.PACKING
    concurrency = 1  # one 645x440x440 volume (0.5 GB) in memory at a time

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._volumes = {"on_arrival": 0, "from_files": 0}

    async def status(self) -> dict[str, Any]:
        """The stage's status, and how many volumes came from the Compilator or the files."""
        return {**await super().status(), "volumes": dict(self._volumes)}

    def handle(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            paths = instance_paths(task_id, session=session)
            validated = Validated.of(get_task(task_id, session=session))
            client_id = effective_client_id(self.settings, session=session)
        built = _volume_built_on_arrival(task_id, paths)
        self._volumes["on_arrival" if built is not None else "from_files"] += 1
        if built is not None:
            prepared, volume = built
            spacing = prepared.spacing_zyx
            slice_paths = tuple(Path(p) for p in prepared.slice_paths)
        else:
            read = load_series_volume([Path(p) for p in paths])
            volume, spacing, slice_paths = read.data, read.spacing_zyx, read.slice_paths
            del read
        try:
            packed, quant = pack(
                volume,
                spacing_zyx=spacing,
                slice_paths=slice_paths,
                first_header=dcmread(slice_paths[0], stop_before_pixels=True),
                validated=validated,
                task_id=task_id,
                client_id=client_id,
                archive=TaskFiles.of(self.settings, task_id).archive,
                compresslevel=self.settings.zip_compression_level,
            )
        finally:
            release_pages(volume)  # the object store's pages this process read (0 if private)
            del volume, built
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            packed.put(task)
            quant.put(task)


def _volume_built_on_arrival(
    task_id: str, paths: Sequence[str]
) -> tuple[PreparedVolume, np.ndarray] | None:
    """The Compilator's volume of exactly these files and its voxels, a read-only view of the
    object it put (zero-copy, issue 13); None when the files must be read instead."""
    try:
        compilator = ray.get_actor(COMPILATOR, namespace=NAMESPACE)
        prepared = cast(
            PreparedVolume | None,
            ray.get(compilator.take_volume.remote(task_id), timeout=TAKE_VOLUME_TIMEOUT_S),
        )
        if prepared is None:
            return None
        if not prepared.is_of(paths):
            logger.info("task %s: the volume built on arrival is not the task's", task_id)
            return None
        # Here too: the object dies with its owner, a Compilator that restarted meanwhile.
        volume = cast(np.ndarray, ray.get(prepared.ref, timeout=TAKE_VOLUME_TIMEOUT_S))
    except Exception as exc:  # restarting, gone, slow, lost: a head start lost, nothing more
        logger.warning(
            "task %s: no volume from the Compilator (%s); reading the files", task_id, exc
        )
        return None
    return prepared, volume
