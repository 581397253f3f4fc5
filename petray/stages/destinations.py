"""Which DICOM destinations a task is delivered to, decided once at validation."""

from __future__ import annotations

from sqlalchemy.orm import Session

from petray.db.models import Device, Task, TaskDestination
from petray.errors import ValidationFailed
from petray.site.siteconfig import destinations, get_site_config


def assign_destinations(task: Task, *, session: Session) -> list[TaskDestination]:
    """Create the task's destination rows (idempotent); ValidationFailed when there are none.

    "Reply to sender" needs the sender as a known device: its port is not the one it called from.
    """
    targets: list[Device] = destinations(session=session)
    if get_site_config(session=session).reply_to_sender:
        senders = [
            d
            for d in session.query(Device).filter(Device.ae_title == task.calling_ae).all()
            if d not in targets
        ]
        targets.extend(senders)
    if not targets:
        raise ValidationFailed(
            "no DICOM destination is configured (add one with `petray device add --destination`"
            " or enable reply to sender for a known source)"
        )
    existing = {(d.ae_title, d.host, d.port) for d in task.destinations}
    for device in targets:
        peer = (device.ae_title, device.host, device.port)
        # Two devices may name the same peer; one row keeps it from getting every instance twice
        # (and keeps the task_destination unique constraint from failing the validation).
        if peer in existing:
            continue
        existing.add(peer)
        row = TaskDestination(
            task_id=task.id,
            name=device.name,
            ae_title=device.ae_title,
            host=device.host,
            port=device.port,
            stow_url=device.stow_url,
        )
        session.add(row)
        task.destinations.append(row)
    return list(task.destinations)
