"""UnpackerActor: checks the result, fans out one filter job per post-filter, writes the series.

Filter workers come and go (a restart, a node joining or lost). The Unpacker sizes the pool to
the cluster's capacity for every task and on a timer (actors/filter_pool.py), waits with a clear
reason while no worker is alive, and when a worker dies under a job it reruns only that job on a
live worker, on another node when there is one; the jobs already finished keep their series.
A worker on another node returns its series encoded and the Unpacker, on the gateway's node,
writes it (issue 12).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnschedulableError, RayActorError, RayTaskError

from actors.filter_pool import PoolWorker, sync_pool
from actors.names import STAGE_ACTORS
from actors.placement import gateway_node_id
from actors.plasma import release_pages
from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.errors import PetrayError, TransientError
from petray.imaging.quant import ActivityMetrics
from petray.service.archive import DENOISED_NAME, NOISE_NAME
from petray.settings import Settings
from petray.site import audit
from petray.stages.outputs import (
    BuiltSeries,
    clear_outputs,
    filters_for,
    record_outputs,
    series_job,
)
from petray.stages.records import Packed, Quant
from petray.stages.review import can_hold, hold, hold_reason, must_hold, site_thresholds
from petray.stages.unpack import (
    FilteredSeries,
    PreparedTemplates,
    judged,
    open_result,
    written,
)
from petray.task_files import TaskFiles
from petray.tasks import get_task

logger = logging.getLogger(__name__)

# A job whose worker died is rerun on another live worker at most this many times per attempt.
MAX_JOB_RERUNS = 3
# How long a task waits for workers just created (a node that joined) to start.
WORKER_START_S = 30.0
# How often the pool follows nodes joining and leaving while no task asks for it.
POOL_SYNC_INTERVAL_S = 10.0


@ray.remote(num_cpus=0, max_restarts=-1)
class UnpackerActor(StageWorker):
    stage = Stage.UNPACKING
    concurrency = 1

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # The Unpacker is pinned to the gateway's node, where the output directory lives.
        self.node_id = gateway_node_id()
        self._templates = PreparedTemplates()
        self.background.spawn(self._follow_capacity())

    async def _follow_capacity(self) -> None:
        """Keep one worker per slot as nodes join and leave, also between tasks."""
        while True:
            try:
                await asyncio.to_thread(sync_pool)
            except Exception:
                logger.exception("could not size the filter worker pool")
            await asyncio.sleep(POOL_SYNC_INTERVAL_S)

    def _alive_workers(self) -> list[PoolWorker]:
        pool = sync_pool()
        if not pool.alive and pool.workers:
            # Just created (a node joined, or the first task): give them a bounded moment.
            ray.wait(
                [w.handle.__ray_ready__.remote() for w in pool.workers],
                num_returns=1,
                timeout=WORKER_START_S,
            )
            pool = sync_pool()
        if not pool.alive:
            raise TransientError(pool.waiting_reason())
        return list(pool.alive)

    async def prepare(self, task_id: str) -> None:
        """The task is with the service: parse its source headers meanwhile (fire and forget)."""
        try:
            packed = await asyncio.to_thread(self._packed, task_id)
        except Exception:
            logger.exception("task %s: cannot prepare its templates ahead", task_id)
            return
        self._templates.prepare(task_id, packed.slice_paths)

    def _packed(self, task_id: str) -> Packed:
        with unit_of_work(self.sessions) as session:
            return Packed.of(get_task(task_id, session=session))

    def handle(self, task_id: str) -> None:
        self._alive_workers()  # before reading gigabytes: wait (retrying) while none is alive
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            packed = Packed.of(task)
            # Tasks packed before issue 15 have no received metrics to compare with.
            quant = Quant.find(task.details)
            specs = filters_for(task, session=session)
            original_description = task.series.description
            # Read once: the verdict below uses the limits this decision was made with.
            thresholds = site_thresholds(session=session)
        # A task the quantitative check cannot hold has each series sent as soon as it is
        # written, while the others are still being filtered (issue 13).
        send_early = not can_hold(quant, thresholds)
        # Each volume goes into the object store as soon as it is checked, before the next is
        # read (issue 13: one private 0.5 GB copy at a time); every job reads the same shared
        # copy. This actor keeps only the ref and lets go of the pages its put wrote.
        refs: dict[str, Any] = {}

        def keep(name: str, array: np.ndarray) -> np.ndarray:
            refs[name] = ray.put(array)
            view: np.ndarray = ray.get(refs[name])
            release_pages(view)  # written by the put, never read here again
            return view

        result, templates = open_result(
            TaskFiles.of(self.settings, task_id).result_archive,
            packed,
            task_id=task_id,
            max_uncompressed_bytes=self.settings.max_result_bytes,
            max_factor=self.settings.result_max_factor,
            templates=self._templates.take(task_id, packed.slice_paths),
            keep=keep,
        )
        denoised_ref = refs[DENOISED_NAME]
        noise_ref = refs.get(NOISE_NAME)
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
        spacing = packed.spacing_zyx
        threshold = quant.body_threshold_bqml if quant else None
        measured: dict[int, ActivityMetrics] = {}

        def run(index: int, worker: Any) -> Any:
            # One filter job per filter; a worker runs its jobs one at a time.
            return worker.filter_series.remote(
                denoised_ref,
                noise_ref,
                templates_ref,
                specs[index],
                spacing,
                jobs[index],
                self.node_id,
                threshold,
            )

        def collect(index: int, result: FilteredSeries) -> int:
            if result.metrics is not None:
                measured[index] = result.metrics
            count = written(result, jobs[index])
            if send_early:
                self._hand_over(task_id, jobs[index].outdir)
            return count

        counts = self._run_jobs(task_id, len(jobs), run, collect)
        built = [
            BuiltSeries.from_job(spec, job, instances)
            for spec, job, instances in zip(specs, jobs, counts, strict=True)
        ]
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            record_outputs(task, built, session=session)
            verdict = judged(quant, specs, measured, thresholds)
            if verdict is not None:
                verdict.put(task)

    def _hand_over(self, task_id: str, directory: Path) -> None:
        """Tell the StoreSCU that a series is written; a lost message only loses the head start."""
        try:
            sender = self.dispatcher.handle(STAGE_ACTORS[Stage.SENDING])
            sender.deliver_ready.remote(task_id, str(directory))
        except Exception:
            logger.warning("task %s: no StoreSCU for an early delivery", task_id)

    def on_advance(self, task: Any, target: Stage, *, session: Any) -> None:
        """A result beyond the site's quantitative limits stops here, held for review."""
        if target != Stage.SENDING or not must_hold(task):
            super().on_advance(task, target, session=session)
            return
        hold(task, session=session)
        audit.record(
            "task.hold",
            session=session,
            actor=audit.GATEWAY,
            target=f"task {task.id}",
            outcome="held",
            detail={"reason": hold_reason(task)},
        )
        logger.warning("task %s held for quantitative review", task.id)

    def _run_jobs(
        self,
        task_id: str,
        count: int,
        run: Callable[[int, Any], Any],
        collect: Callable[[int, Any], int] = lambda _index, result: int(result),
    ) -> list[int]:
        """Run every job; a job whose worker died reruns alone on a live worker.

        ``collect`` turns a finished job's result into its file count (and writes files a
        worker on another node returned). A rerun avoids the nodes whose workers already died
        in this run while another node has a live worker: Ray may take seconds to see a lost
        node, and its workers still look alive until then. A petray error raised in a worker
        keeps its class and clean reason.
        """
        workers = self._alive_workers()
        pending: dict[Any, tuple[int, PoolWorker]] = {}
        for i in range(count):
            worker = workers[i % len(workers)]
            pending[run(i, worker.handle)] = (i, worker)
        reruns = dict.fromkeys(range(count), 0)
        lost_nodes: set[str] = set()
        counts: dict[int, int] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, worker = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as exc:
                if isinstance(exc.cause, PetrayError):
                    raise exc.cause from None  # not the remote traceback as the reason
                raise
            except (RayActorError, ActorUnschedulableError):
                # Died, or lost with its node: a worker pinned to a node that is gone cannot
                # be restarted and Ray reports it unschedulable.
                reruns[index] += 1
                if reruns[index] > MAX_JOB_RERUNS:
                    raise TransientError(
                        f"filter workers kept stopping ({MAX_JOB_RERUNS} reruns of one filter)"
                    ) from None
                lost_nodes.add(worker.node_id)
                alive = self._alive_workers()
                elsewhere = [w for w in alive if w.node_id not in lost_nodes] or alive
                logger.warning(
                    "task %s: a filter worker stopped; rerunning filter %d of %d alone",
                    task_id,
                    index + 1,
                    count,
                )
                substitute = elsewhere[reruns[index] % len(elsewhere)]
                pending[run(index, substitute.handle)] = (index, substitute)
                continue
            counts[index] = collect(index, result)
        return [counts[i] for i in range(count)]
