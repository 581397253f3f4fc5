"""PackerActor: the series as one float32 volume, de-identified into ``{task_id}.zip``."""

from __future__ import annotations

from pathlib import Path

import ray
from pydicom import dcmread

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.imaging.volume import load_series_volume
from petray.site.siteconfig import effective_client_id
from petray.stages.pack import pack
from petray.stages.records import Validated
from petray.task_files import TaskFiles
from petray.tasks import get_task, instance_paths


@ray.remote(num_cpus=0, max_restarts=-1)
class PackerActor(StageWorker):
    stage = Stage.PACKING
    concurrency = 1  # one 645x440x440 volume (0.5 GB) in memory at a time

    def handle(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            paths = [Path(p) for p in instance_paths(task_id, session=session)]
            validated = Validated.of(get_task(task_id, session=session))
            client_id = effective_client_id(self.settings, session=session)
        volume = load_series_volume(paths)
        # The volume goes into the object store once; what is packed is the read-only,
        # zero-copy view of it, and the private copy is dropped straight away.
        volume_ref = ray.put(volume.data)
        spacing, slice_paths = volume.spacing_zyx, volume.slice_paths
        del volume
        packed, quant = pack(
            ray.get(volume_ref),
            spacing_zyx=spacing,
            slice_paths=slice_paths,
            first_header=dcmread(slice_paths[0], stop_before_pixels=True),
            validated=validated,
            task_id=task_id,
            client_id=client_id,
            archive=TaskFiles.of(self.settings, task_id).archive,
            compresslevel=self.settings.zip_compression_level,
        )
        del volume_ref
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            packed.put(task)
            quant.put(task)
