"""UnpackerActor: checks the result, fans out one filter job per post-filter, writes the series."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.names import NAMESPACE, filter_worker_name
from actors.stage import StageWorker
from petray.archive import read_result_archive
from petray.db.engine import unit_of_work
from petray.derive import write_derived_series
from petray.domain import Stage
from petray.filters import series_description
from petray.outputs import (
    BuiltSeries,
    clear_outputs,
    derivation_description,
    filters_for,
    output_dir,
    output_series_uid,
    record_outputs,
)
from petray.tasks import get_task


@ray.remote(num_cpus=0, max_restarts=-1)
class UnpackerActor(StageWorker):
    stage = Stage.UNPACKING
    concurrency = 1

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._workers = [
            ray.get_actor(filter_worker_name(i), namespace=NAMESPACE)
            for i in range(settings.filter_workers)
        ]

    def handle(self, task_id: str) -> Stage | None:
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            details = dict(task.details)
            specs = filters_for(task, session=session)
            original_description = task.series.description
        result = read_result_archive(
            self.settings.work_dir / f"{task_id}.result.zip",
            expected_shape=details["shape"],
            max_uncompressed_bytes=self.settings.max_result_bytes,
        )
        spacing = details["spacing_zyx"]
        # Each volume is put once; every filter job reads the same shared copy.
        denoised_ref = ray.put(result.denoised)
        noise_ref = ray.put(result.noise) if result.noise is not None else None
        algorithm = result.algorithm
        del result
        jobs = [
            self._workers[i % len(self._workers)].apply.remote(
                denoised_ref, noise_ref, spec, spacing
            )
            for i, spec in enumerate(specs)
        ]
        sources = [Path(p) for p in details["slice_paths"]]
        root = self.settings.output_dir
        with unit_of_work(self.sessions) as session:
            clear_outputs(root, task_id, session=session)
        built: list[BuiltSeries] = []
        job: Any
        for spec, job in zip(specs, jobs, strict=True):
            filtered: np.ndarray = ray.get(job)
            uid = output_series_uid(self.settings.uid_root, task_id, spec)
            description = series_description(original_description, spec)
            directory = output_dir(root, task_id, spec)
            paths = write_derived_series(
                filtered,
                sources,
                directory,
                series_instance_uid=uid,
                series_number=spec.series_number,
                series_description=description,
                derivation_description=derivation_description(spec, algorithm),
                uid_root=self.settings.uid_root,
            )
            del filtered
            built.append(BuiltSeries(spec, uid, description, directory, len(paths)))
        with unit_of_work(self.sessions) as session:
            record_outputs(get_task(task_id, session=session), built, session=session)
        return Stage.SENDING
