"""StoreScuActor: sends every output series to every destination of the task."""

from __future__ import annotations

import logging

import ray
from ray.util import metrics

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.delivery import pending_destinations, record_sent, set_destination_state
from petray.domain import Stage
from petray.errors import DeliveryRefused, TransientError
from petray.outputs import output_files
from petray.scu import send_instances
from petray.siteconfig import effective_listener
from petray.tasks import get_task

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1)
class StoreScuActor(StageWorker):
    stage = Stage.SENDING
    concurrency = 2

    def __init__(self, settings: object) -> None:
        super().__init__(settings)  # type: ignore[arg-type]
        self._m_sent = metrics.Counter("petray_instances_sent", "Instances delivered")

    def handle(self, task_id: str) -> Stage | None:
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            files = output_files(task)
            destinations = pending_destinations(task_id, session=session)
            calling_ae = effective_listener(self.settings, session=session).ae_title
        transient: list[str] = []
        refused: list[str] = []
        for destination in destinations:

            def on_sent(sop_uid: str, pk: int = destination.pk) -> None:
                with unit_of_work(self.sessions) as session:
                    record_sent(pk, sop_uid, session=session)
                self._m_sent.inc()

            try:
                send_instances(
                    destination.node,
                    files,
                    calling_ae=calling_ae,
                    skip_sop_uids=destination.already_sent,
                    on_sent=on_sent,
                )
            except TransientError as exc:
                transient.append(f"{destination.name}: {exc}")
                with unit_of_work(self.sessions) as session:
                    set_destination_state(
                        destination.pk, "waiting", reason=str(exc), session=session
                    )
                continue
            except DeliveryRefused as exc:
                refused.append(f"{destination.name}: {exc}")
                with unit_of_work(self.sessions) as session:
                    set_destination_state(
                        destination.pk, "failed", reason=str(exc), session=session
                    )
                continue
            with unit_of_work(self.sessions) as session:
                set_destination_state(destination.pk, "done", session=session)
        if refused:
            raise DeliveryRefused("; ".join(refused))
        if transient:
            raise TransientError("; ".join(transient))
        return Stage.DONE
