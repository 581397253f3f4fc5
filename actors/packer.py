"""PackerActor: the series as one float32 volume, de-identified into ``{task_id}.zip``."""

from __future__ import annotations

from pathlib import Path

import ray
from pydicom import dcmread

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.imaging.quant import body_threshold, measure
from petray.imaging.suv import suv_scale
from petray.imaging.volume import load_series_volume
from petray.service.archive import peak_magnitude, write_upload_archive
from petray.service.packing import upload_metadata
from petray.site.siteconfig import effective_client_id
from petray.stages.review import QUANT, received_record
from petray.task_files import TaskFiles
from petray.tasks import get_task, instance_paths


@ray.remote(num_cpus=0, max_restarts=-1)
class PackerActor(StageWorker):
    stage = Stage.PACKING
    concurrency = 1  # one 645x440x440 volume (0.5 GB) in memory at a time

    def handle(self, task_id: str) -> Stage | None:
        with unit_of_work(self.sessions) as session:
            paths = [Path(p) for p in instance_paths(task_id, session=session)]
            details = dict(get_task(task_id, session=session).details)
            client_id = effective_client_id(self.settings, session=session)
        volume = load_series_volume(paths)
        # The volume goes into the object store once; what is archived is the read-only,
        # zero-copy view of it, and the private copy is dropped straight away.
        volume_ref = ray.put(volume.data)
        shape, spacing = volume.shape, volume.spacing_zyx
        slice_paths = [str(p) for p in volume.slice_paths]
        del volume
        view = ray.get(volume_ref)
        archive = TaskFiles.of(self.settings, task_id).archive
        archive.parent.mkdir(parents=True, exist_ok=True)
        metadata = upload_metadata(details["processing"], task_id=task_id, client_id=client_id)
        sha256 = write_upload_archive(
            archive,
            task_id=task_id,
            volume=view,
            voxel_spacing_zyx=spacing,
            metadata=metadata,
            compresslevel=self.settings.zip_compression_level,
        )
        input_peak = peak_magnitude(view)
        # The quantitative check's reference (issue 15), on the same read-only view.
        threshold = body_threshold(view)
        metrics = measure(view, spacing, body_threshold_bqml=threshold)
        del view, volume_ref
        scale = suv_scale(
            dcmread(slice_paths[0], stop_before_pixels=True),
            half_life_s=details["processing"].get("HalfLife"),
        )
        quant = received_record(
            metrics, suv_factor=scale.factor, suv_reason=scale.reason, body_threshold=threshold
        )
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            task.details = {
                **task.details,
                "archive": str(archive),
                "sha256": sha256,
                "shape": list(shape),
                "spacing_zyx": list(spacing),
                # The Unpacker bounds the result's values by it (issue 9).
                "input_peak": input_peak,
                "slice_paths": slice_paths,
                QUANT: quant,
            }
        return Stage.UPLOADING
