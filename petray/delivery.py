"""Delivery bookkeeping: per-destination progress that makes resumption duplicate-free."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from petray.db.models import SentInstance, TaskDestination
from petray.scu import DicomNode


@dataclass(frozen=True)
class PendingDestination:
    pk: int
    name: str
    node: DicomNode
    already_sent: frozenset[str]


def pending_destinations(task_id: str, *, session: Session) -> list[PendingDestination]:
    rows = session.scalars(
        select(TaskDestination)
        .where(TaskDestination.task_id == task_id)
        .where(TaskDestination.state != "done")
        .order_by(TaskDestination.id)
    ).all()
    return [
        PendingDestination(
            pk=row.id,
            name=row.name,
            node=DicomNode(ae_title=row.ae_title, host=row.host, port=row.port),
            already_sent=frozenset(
                session.scalars(
                    select(SentInstance.sop_instance_uid).where(
                        SentInstance.destination_pk == row.id
                    )
                )
            ),
        )
        for row in rows
    ]


def record_sent(destination_pk: int, sop_instance_uid: str, *, session: Session) -> None:
    """Note one acknowledged instance; the caller commits it before sending more (resumption).

    Called once per instance on the delivery path, so it stays two plain statements: a Core
    insert skips the ORM unit-of-work bookkeeping (~0.35 ms per committed transaction on SQLite
    WAL instead of ~0.42, bench/scu.py). A repeat raises IntegrityError (unique constraint).
    """
    session.execute(
        insert(SentInstance).values(
            destination_pk=destination_pk, sop_instance_uid=sop_instance_uid
        )
    )
    session.execute(
        update(TaskDestination)
        .where(TaskDestination.id == destination_pk)
        .values(sent=TaskDestination.sent + 1, state="sending")
    )


def set_destination_state(
    destination_pk: int, state: str, *, session: Session, reason: str = ""
) -> None:
    session.execute(
        update(TaskDestination)
        .where(TaskDestination.id == destination_pk)
        .values(state=state, reason=reason)
    )
