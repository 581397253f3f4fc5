"""UnpackerActor: checks the result, fans out one filter-and-write job per post-filter."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.names import NAMESPACE, filter_worker_name
from actors.stage import StageWorker
from petray.archive import read_result_archive
from petray.db.engine import unit_of_work
from petray.derive import prepare_templates
from petray.domain import Stage
from petray.errors import PetrayError, TransientError
from petray.outputs import BuiltSeries, clear_outputs, filters_for, record_outputs, series_job
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
        sources = [Path(p) for p in details["slice_paths"]]
        # Source headers are parsed (pure Python) while the archive is unzipped and hashed
        # (C code that releases the GIL): the two overlap in this process.
        with ThreadPoolExecutor(max_workers=1) as pool:
            templates_future = pool.submit(prepare_templates, sources)
            result = read_result_archive(
                self.settings.work_dir / f"{task_id}.result.zip",
                expected_shape=details["shape"],
                max_uncompressed_bytes=self.settings.max_result_bytes,
            )
            templates = templates_future.result()
        # Each volume and the templates are put once; every job reads the same shared copy.
        denoised_ref = ray.put(result.denoised)
        noise_ref = ray.put(result.noise) if result.noise is not None else None
        templates_ref = ray.put(templates)
        algorithm = result.algorithm
        del result, templates
        root = self.settings.output_dir
        with unit_of_work(self.sessions) as session:
            clear_outputs(root, task_id, session=session)  # before any worker writes
        jobs = [
            series_job(
                root,
                task_id,
                spec,
                uid_root=self.settings.uid_root,
                original_description=original_description,
                algorithm=algorithm,
            )
            for spec in specs
        ]
        # One filter-and-write job per filter; a worker runs its jobs one at a time.
        pending = [
            self._workers[i % len(self._workers)].filter_and_write.remote(
                denoised_ref, noise_ref, templates_ref, spec, details["spacing_zyx"], job
            )
            for i, (spec, job) in enumerate(zip(specs, jobs, strict=True))
        ]
        counts = _gather(pending)
        built = [
            BuiltSeries.from_job(spec, job, instances)
            for spec, job, instances in zip(specs, jobs, counts, strict=True)
        ]
        with unit_of_work(self.sessions) as session:
            record_outputs(get_task(task_id, session=session), built, session=session)
        return Stage.SENDING


def _gather(pending: list[Any]) -> list[int]:
    """Wait for every job; a petray error raised in a worker keeps its class and clean reason."""
    try:
        return [int(n) for n in ray.get(pending)]
    except RayTaskError as exc:
        if isinstance(exc.cause, PetrayError):
            raise exc.cause from None  # not the remote traceback as the task's failure reason
        raise
    except RayActorError:
        # The worker restarts (max_restarts=-1); the retry rewrites every series from scratch.
        raise TransientError("a filter worker stopped while filtering; retrying") from None
