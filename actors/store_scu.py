"""StoreScuActor: sends every output series to every destination of the task."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import ray
from ray.util import metrics

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog
from petray.domain import Stage
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
from petray.stages.outputs import output_files
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

    def handle(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            files = output_files(task)
            destinations = with_stow_credentials(
                with_device_tls(pending_destinations(task_id, session=session), session=session),
                session=session,
            )
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
        self, destination: PendingDestination, files: list[Path], calling_ae: str
    ) -> tuple[str, Exception | None]:
        """Send to one destination and commit its state; the failure, if any, is returned."""

        def on_sent(sop_uid: str) -> None:
            # Committed before that association sends its next instance: a crash can resend
            # only instances acknowledged just before it (one per association), never a
            # recorded one. One short transaction costs ~0.5-1 ms on SQLite WAL (bench/scu.py).
            with unit_of_work(self.sessions) as session:
                record_sent(destination.pk, sop_uid, session=session)
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
            self._m_bytes.inc(report.bytes_sent, tags=tags)
        self._m_outcomes.inc(tags={**tags, "outcome": state})
        with unit_of_work(self.sessions) as session:
            set_destination_state(destination.pk, state, reason=str(failure or ""), session=session)
            # Issue 10: associations out are in the activity log and the audit trail (a
            # STOW-RS delivery too, issue 15: its URL stands for the peer).
            outcome = state if failure is None else f"{state}: {failure}"
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
