"""StoreScuActor: sends every output series to every destination of the task.

Streaming (issue 13): while the task is still unpacking, the Unpacker hands over each derived
series as soon as it is written (``deliver_ready``), so the biggest two stages overlap. Such an
early delivery records each acknowledged instance like the stage does and is only a head start:
the Sending stage then sends whatever is not recorded yet (normally nothing) and alone decides
the destination's state. A task whose quantitative check could hold it is never sent early.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

import ray
from ray.util import metrics
from sqlalchemy.orm import Session

from actors.stage import StageWorker
from petray.db.engine import core_transaction, unit_of_work
from petray.db.models import AssociationLog
from petray.domain import Stage, State
from petray.errors import DeliveryRefused, TransientError
from petray.site.audit import record_association
from petray.site.siteconfig import effective_listener
from petray.stages.delivery import (
    PendingDestination,
    pending_destinations,
    record_sent,
    send_to,
    set_destination_state,
    with_device_tls,
    with_stow_credentials,
)
from petray.stages.outputs import output_files, series_files
from petray.tasks import get_task

logger = logging.getLogger(__name__)

# Associations opened at once to one destination for one task. Measured (bench/scu.py): three
# associations to Orthanc deliver a 645-slice series in about half the time of one, because
# each association otherwise waits for the destination between instances.
ASSOCIATIONS_PER_DESTINATION = 3


@ray.remote(num_cpus=0, max_restarts=-1)
class StoreScuActor(StageWorker):
    stage = Stage.SENDING
    concurrency = 2

    def __init__(self, settings: object) -> None:
        super().__init__(settings)  # type: ignore[arg-type]
        # Tagged by destination (the device name staff gave it, never patient data) so that a
        # dashboard shows which PACS is slow or failing (issue 10).
        tags = ("destination",)
        self._m_sent = metrics.Counter(
            "petray_instances_sent", "Instances delivered", tag_keys=tags
        )
        self._m_bytes = metrics.Counter(
            "petray_bytes_sent", "Bytes of delivered instances", tag_keys=tags
        )
        self._m_outcomes = metrics.Counter(
            "petray_deliveries",
            "Delivery attempts to a destination by outcome (done, waiting, failed)",
            tag_keys=("destination", "outcome"),
        )
        # Early deliveries: two threads for every task, and each task's unfinished jobs (a
        # task that never reaches sending, failed or cancelled, leaves no thread behind).
        self._early_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="petray-early")
        self._early: dict[str, list[Future[None]]] = {}
        # One early job at a time per series: an Unpacker restarted mid-task rebuilds a series
        # (same UIDs) and hands it over again, maybe while the first job still sends it; the
        # second job then starts from what the first recorded instead of sending alongside it.
        self._series_locks: dict[str, dict[str, threading.Lock]] = {}

    async def deliver_ready(self, task_id: str, directory: str) -> None:
        """Start sending one written series of a task that is still unpacking (fire and forget)."""
        # Only unfinished jobs matter to the stage's wait: forget tasks whose jobs all ended.
        # (A snapshot: the stage's thread pops entries meanwhile.)
        for task, jobs in list(self._early.items()):
            if all(job.done() for job in jobs):
                self._early.pop(task, None)
                self._series_locks.pop(task, None)
        job = self._early_pool.submit(self._deliver_early, task_id, Path(directory))
        self._early.setdefault(task_id, []).append(job)

    def _deliver_early(self, task_id: str, directory: Path) -> None:
        locks = self._series_locks.setdefault(task_id, {})
        with locks.setdefault(directory.name, threading.Lock()):
            self._deliver_series_early(task_id, directory)

    def _deliver_series_early(self, task_id: str, directory: Path) -> None:
        try:
            with unit_of_work(self.sessions) as session:
                task = get_task(task_id, session=session)
                if task.stage != Stage.UNPACKING.value or task.state != State.ACTIVE.value:
                    return  # the stage (or an operator) has taken over
                destinations = self._destinations(task_id, session=session)
                calling_ae = effective_listener(self.settings, session=session).ae_title
            files = series_files(directory)
            for destination in destinations:
                _name, failure = self._deliver(destination, files, calling_ae, final=False)
                if failure is not None:
                    logger.warning(
                        "task %s: early delivery to %s stopped (%s); the Sending stage retries",
                        task_id,
                        destination.name,
                        failure,
                    )
        except Exception:
            # A head start only: whatever it did not send, the Sending stage sends.
            logger.exception("task %s: early delivery of %s failed", task_id, directory.name)

    def _wait_for_early(self, task_id: str) -> None:
        """Let the task's early deliveries end before the stage reads what was sent."""
        wait(self._early.pop(task_id, []))
        self._series_locks.pop(task_id, None)

    def _destinations(self, task_id: str, *, session: Session) -> list[PendingDestination]:
        return with_stow_credentials(
            with_device_tls(pending_destinations(task_id, session=session), session=session),
            session=session,
        )

    def handle(self, task_id: str) -> None:
        self._wait_for_early(task_id)
        try:
            self._send(task_id)
        finally:
            self._wait_for_early(task_id)  # one queued after the first wait found the task sending

    def _send(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            files = output_files(task)
            destinations = self._destinations(task_id, session=session)
            calling_ae = effective_listener(self.settings, session=session).ae_title
        if len(destinations) <= 1:
            outcomes = [self._deliver(d, files, calling_ae) for d in destinations]
        else:
            # Destinations are independent (own progress rows, own associations): a slow PACS
            # must not hold back the others. Threads suffice, the work is network-bound.
            with ThreadPoolExecutor(
                max_workers=len(destinations), thread_name_prefix="petray-dest"
            ) as pool:
                outcomes = list(
                    pool.map(lambda d: self._deliver(d, files, calling_ae), destinations)
                )
        refused = [f"{name}: {exc}" for name, exc in outcomes if isinstance(exc, DeliveryRefused)]
        transient = [f"{name}: {exc}" for name, exc in outcomes if isinstance(exc, TransientError)]
        if refused:
            raise DeliveryRefused("; ".join(refused))
        if transient:
            raise TransientError("; ".join(transient))

    def _deliver(
        self,
        destination: PendingDestination,
        files: list[Path],
        calling_ae: str,
        *,
        final: bool = True,
    ) -> tuple[str, Exception | None]:
        """Send to one destination and commit its state (``final``: the Sending stage, which
        sends all of the task's files); the failure, if any, is returned."""

        def on_sent(sop_uid: str) -> None:
            # Committed before that association sends its next instance: a crash can resend
            # only instances acknowledged just before it (one per association), never a
            # recorded one. One short Core transaction: ~0.1 ms of CPU on SQLite WAL.
            with core_transaction(self.sessions) as connection:
                record_sent(destination.pk, sop_uid, session=connection)
            self._m_sent.inc(tags=tags)
            sent[0] += 1

        tags = {"destination": destination.name}
        failure: Exception | None = None
        sent, started = [0], datetime.now(UTC)
        try:
            report = send_to(
                destination,
                files,
                calling_ae=calling_ae,
                on_sent=on_sent,
                associations=ASSOCIATIONS_PER_DESTINATION,
            )
        except TransientError as exc:
            state, failure = "waiting", exc
        except DeliveryRefused as exc:
            state, failure = "failed", exc
        else:
            state = "done"
            if report.bytes_sent:  # Ray's counters refuse 0 (all of it went early)
                self._m_bytes.inc(report.bytes_sent, tags=tags)
        if final:
            self._m_outcomes.inc(tags={**tags, "outcome": state})
        with unit_of_work(self.sessions) as session:
            if final:
                set_destination_state(
                    destination.pk, state, reason=str(failure or ""), session=session
                )
            # Issue 10: associations out are in the activity log and the audit trail (a
            # STOW-RS delivery too, issue 15: its URL stands for the peer). Nothing left to
            # send (all delivered early) opens no association.
            outcome = state if failure is None else f"{state}: {failure}"
            if failure is None and sent[0] == 0:
                return destination.name, None
            record_association(
                AssociationLog(
                    direction="out",
                    calling_ae=calling_ae,
                    called_ae=destination.called_ae,
                    peer_host=destination.address[:255],
                    started=started,
                    ended=datetime.now(UTC),
                    instances=sent[0],
                    outcome=outcome[:255],
                ),
                session=session,
            )
        return destination.name, failure
