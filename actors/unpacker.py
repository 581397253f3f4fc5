"""UnpackerActor: checks the result, fans out one filter-and-write job per post-filter.

Filter workers come and go (a restart, a lost node). The Unpacker looks them up for every task,
waits with a clear reason while none is alive, and when a worker dies under a job it reruns only
that job on a live worker; the jobs already finished keep their series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.names import NAMESPACE, filter_worker_name
from actors.runtime import actor_state
from actors.stage import StageWorker
from petray.archive import read_result_archive
from petray.db.engine import unit_of_work
from petray.derive import prepare_templates
from petray.domain import Stage
from petray.errors import PetrayError, TransientError
from petray.outputs import BuiltSeries, clear_outputs, filters_for, record_outputs, series_job
from petray.task_files import TaskFiles
from petray.tasks import get_task

logger = logging.getLogger(__name__)

# A job whose worker died is rerun on another live worker at most this many times per attempt.
MAX_JOB_RERUNS = 3


@ray.remote(num_cpus=0, max_restarts=-1)
class UnpackerActor(StageWorker):
    stage = Stage.UNPACKING
    concurrency = 1

    def _alive_workers(self) -> list[Any]:
        alive = []
        for index in range(self.settings.filter_workers):
            try:
                handle = ray.get_actor(filter_worker_name(index), namespace=NAMESPACE)
            except ValueError:
                continue  # not created, or gone for good
            if actor_state(handle)[0] == "ALIVE":
                alive.append(handle)
        if not alive:
            raise TransientError(
                f"no filter worker available: 0 of {self.settings.filter_workers} alive"
            )
        return alive

    def handle(self, task_id: str) -> Stage | None:
        self._alive_workers()  # before reading gigabytes: wait (retrying) while none is alive
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
                TaskFiles.of(self.settings, task_id).result_archive,
                expected_shape=details["shape"],
                max_uncompressed_bytes=self.settings.max_result_bytes,
                expected_task_id=task_id,
                input_peak=details.get("input_peak"),
                max_factor=self.settings.result_max_factor,
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
        spacing = details["spacing_zyx"]

        def run(index: int, worker: Any) -> Any:
            # One filter-and-write job per filter; a worker runs its jobs one at a time.
            return worker.filter_and_write.remote(
                denoised_ref, noise_ref, templates_ref, specs[index], spacing, jobs[index]
            )

        counts = self._run_jobs(task_id, len(jobs), run)
        built = [
            BuiltSeries.from_job(spec, job, instances)
            for spec, job, instances in zip(specs, jobs, counts, strict=True)
        ]
        with unit_of_work(self.sessions) as session:
            record_outputs(get_task(task_id, session=session), built, session=session)
        return Stage.SENDING

    def _run_jobs(self, task_id: str, count: int, run: Callable[[int, Any], Any]) -> list[int]:
        """Run every job; a job whose worker died reruns alone on a live worker.

        A petray error raised in a worker keeps its class and clean reason.
        """
        workers = self._alive_workers()
        pending = {run(i, workers[i % len(workers)]): i for i in range(count)}
        reruns = dict.fromkeys(range(count), 0)
        counts: dict[int, int] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                counts[index] = int(ray.get(ready[0]))
            except RayTaskError as exc:
                if isinstance(exc.cause, PetrayError):
                    raise exc.cause from None  # not the remote traceback as the reason
                raise
            except RayActorError:
                reruns[index] += 1
                if reruns[index] > MAX_JOB_RERUNS:
                    raise TransientError(
                        f"filter workers kept stopping ({MAX_JOB_RERUNS} reruns of one filter)"
                    ) from None
                workers = self._alive_workers()
                logger.warning(
                    "task %s: a filter worker stopped; rerunning filter %d of %d alone",
                    task_id,
                    index + 1,
                    count,
                )
                pending[run(index, workers[reruns[index] % len(workers)])] = index
        return [counts[i] for i in range(count)]
