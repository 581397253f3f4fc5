"""Delivery bookkeeping: per-destination progress that makes resumption duplicate-free.

A destination is reached by C-STORE (``petray.dicom.scu``) or, when its row has a STOW-RS URL, by
DICOMweb (``petray.dicom.stow``, issue 15); both report each acknowledged instance through the same
``on_sent`` so progress, resumption and the retry budget are one mechanism.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from petray.db.models import Device, SentInstance, TaskDestination
from petray.dicom.scu import DicomNode, SendReport, send_instances
from petray.dicom.stow import StowEndpoint, StowReport, store_instances
from petray.dicom.tls import TlsFiles, device_tls
from petray.site.siteconfig import list_devices
from petray.stages.outputs import acknowledged

# The called "AE" of a STOW-RS delivery in the activity log and audit trail: it has none.
STOW_CALLED_AE = "STOW-RS"


@dataclass(frozen=True)
class PendingDestination:
    pk: int
    name: str
    node: DicomNode
    already_sent: frozenset[str]
    # Set for a STOW-RS destination: then ``node`` only carries its address columns.
    stow: StowEndpoint | None = None

    @property
    def called_ae(self) -> str:
        return STOW_CALLED_AE if self.stow is not None else self.node.ae_title

    @property
    def address(self) -> str:
        """Where it is, for logs and the audit trail: the URL, or host:port."""
        return self.stow.url if self.stow is not None else f"{self.node.host}:{self.node.port}"


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
            stow=StowEndpoint(url=row.stow_url) if row.stow_url else None,
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


# Built once: the delivery path runs them once per instance.
_INSERT_SENT = insert(SentInstance)
_COUNT_SENT = (
    update(TaskDestination)
    .where(TaskDestination.id == bindparam("destination"))
    .values(sent=TaskDestination.sent + 1, state="sending")
)


def record_sent(
    destination_pk: int, sop_instance_uid: str, *, session: Session | Connection
) -> None:
    """Note one acknowledged instance; the caller commits it before sending more (resumption).

    Called once per instance on the delivery path, so it stays two plain Core statements, best
    run on a Connection (``core_transaction``): a Session's unit-of-work bookkeeping costs
    several times the SQL. A repeat raises IntegrityError (unique constraint).
    """
    session.execute(
        _INSERT_SENT, {"destination_pk": destination_pk, "sop_instance_uid": sop_instance_uid}
    )
    session.execute(_COUNT_SENT, {"destination": destination_pk})


def set_destination_state(
    destination_pk: int, state: str, *, session: Session, reason: str = ""
) -> None:
    """The destination's state after an attempt, with its count of sent instances taken anew
    from the progress rows (early deliveries may have run beside the unpacking's reset)."""
    session.execute(
        update(TaskDestination)
        .where(TaskDestination.id == destination_pk)
        .values(state=state, reason=reason, sent=acknowledged(destination_pk, session=session))
    )


def _stow_endpoint(device: Device | None, url: str) -> StowEndpoint:
    if device is None:
        return StowEndpoint(url=url)
    return StowEndpoint(
        url=url,
        token=device.stow_token,
        basic=device.stow_basic,
        tls=TlsFiles(ca=device.tls_ca, cert=device.tls_cert, key=device.tls_key),
    )


def with_stow_credentials(
    destinations: list[PendingDestination], *, session: Session
) -> list[PendingDestination]:
    """STOW-RS destinations with their device's credentials and TLS files as they are now.

    Credentials are never copied into a task's rows: they are read at every attempt (a token
    renewed in the console is used on the next retry). The device is found by its URL, else by
    name; a destination whose device is gone is tried without credentials.
    """
    devices = [d for d in list_devices(session=session) if d.stow_url]
    by_url = {d.stow_url: d for d in devices}
    by_name = {d.name: d for d in devices}
    resolved = []
    for pending in destinations:
        if pending.stow is not None:
            url = pending.stow.url
            device = by_url.get(url) or by_name.get(pending.name)
            pending = replace(pending, stow=_stow_endpoint(device, url))
        resolved.append(pending)
    return resolved


def send_to(
    destination: PendingDestination,
    files: Sequence[Path],
    *,
    calling_ae: str,
    on_sent: Callable[[str], None],
    associations: int,
) -> SendReport | StowReport:
    """Deliver ``files`` to one destination by its protocol, skipping what it already has."""
    if destination.stow is not None:
        return store_instances(
            destination.stow, files, skip_sop_uids=destination.already_sent, on_sent=on_sent
        )
    return send_instances(
        destination.node,
        files,
        calling_ae=calling_ae,
        skip_sop_uids=destination.already_sent,
        on_sent=on_sent,
        associations=associations,
    )


def with_device_tls(
    destinations: list[PendingDestination], *, session: Session
) -> list[PendingDestination]:
    """``destinations`` reached as their devices say now: TLS is read at every attempt, so a
    destination switched to TLS (or given a new CA) is used so on the next retry.

    A task's destination rows copy the address at dispatch; the device is found by that
    address, else by name (an edited host), else the destination stays plain.
    """
    devices = list_devices(session=session)
    by_address = {(d.ae_title, d.host, d.port): d for d in devices}
    by_name = {d.name: d for d in devices}
    resolved = []
    for pending in destinations:
        node = pending.node
        device = by_address.get((node.ae_title, node.host, node.port)) or by_name.get(pending.name)
        tls = device_tls(device) if device is not None else None
        resolved.append(replace(pending, node=replace(node, tls=tls)))
    return resolved
