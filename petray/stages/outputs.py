"""Which output series a task gets, what they are called, and where they are recorded."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from petray.db.models import OutputSeries, PostFilter, SentInstance, Task
from petray.imaging.derive import SeriesJob
from petray.imaging.filters import FilterSpec, series_description

IS_MAX = 2**31 - 1
ANY = "all"
DEFAULT_DESCRIPTION = "Denoised"
# With no enabled filter, one series of the denoised volume, numbered after the original.
DEFAULT_SERIES_NUMBER_OFFSET = 1000


def _matches(value: str, wanted: str) -> bool:
    return wanted.strip().lower() in ("", ANY) or wanted.strip().lower() == value.strip().lower()


def filters_for(task: Task, *, session: Session) -> list[FilterSpec]:
    """The enabled filters matching the task's scanner model and radiopharmaceutical."""
    rows = session.scalars(
        select(PostFilter).where(PostFilter.enabled.is_(True)).order_by(PostFilter.series_number)
    ).all()
    specs = [
        FilterSpec(
            id=row.id,
            description=row.description,
            series_number=row.series_number,
            fwhm_mm=row.fwhm_mm,
            noise_pct=row.noise_pct,
            mode=row.mode,  # type: ignore[arg-type]
        )
        for row in rows
        if _matches(task.series.model_name, row.scanner_model)
        and _matches(task.radiopharmaceutical, row.radiopharmaceutical)
    ]
    if specs:
        return specs
    number = min((task.series.series_number or 0) + DEFAULT_SERIES_NUMBER_OFFSET, IS_MAX)
    return [FilterSpec(id=None, description=DEFAULT_DESCRIPTION, series_number=number)]


def _filter_key(spec: FilterSpec) -> str:
    # Two filters may share a series number; the filter id keeps their outputs apart.
    return f"{spec.series_number}-{spec.id if spec.id is not None else 'default'}"


def output_series_uid(uid_root: str, task_id: str, spec: FilterSpec) -> str:
    """Deterministic per task and filter, so a retried task replaces its series, never adds one."""
    return str(
        generate_uid(prefix=f"{uid_root.rstrip('.')}.", entropy_srcs=[task_id, _filter_key(spec)])
    )


def derivation_description(spec: FilterSpec, algorithm: str) -> str:
    parts = [f"petray denoising ({algorithm or 'remote service'})", spec.description]
    if spec.fwhm_mm > 0:
        parts.append(f"Gaussian FWHM {spec.fwhm_mm:g} mm")
    if spec.noise_pct > 0:
        parts.append(f"noise blended {spec.noise_pct:g}%")
    # DerivationDescription is ST: 1024 characters at most.
    return "; ".join(parts)[:1024]


def output_dir(root: Path, task_id: str, spec: FilterSpec) -> Path:
    return root / task_id / f"series-{_filter_key(spec)}"


def series_job(
    root: Path,
    task_id: str,
    spec: FilterSpec,
    *,
    uid_root: str,
    original_description: str,
    algorithm: str,
) -> SeriesJob:
    """What filter ``spec``'s output series of the task is called and where it is written."""
    return SeriesJob(
        outdir=output_dir(root, task_id, spec),
        series_instance_uid=output_series_uid(uid_root, task_id, spec),
        series_number=spec.series_number,
        series_description=series_description(original_description, spec),
        derivation_description=derivation_description(spec, algorithm),
        uid_root=uid_root,
    )


def clear_outputs(root: Path, task_id: str, *, session: Session) -> None:
    """Forget earlier outputs of the task (files and rows) before rebuilding them.

    Delivery progress stays: a rebuilt series of the same result and filter has the same UIDs
    and content (``output_series_uid``), so what a destination acknowledged, e.g. early from an
    unpacking that then stopped, is not sent twice. A new result (``petray.tasks.retry`` from
    the start) forgets it.
    """
    shutil.rmtree(root / task_id, ignore_errors=True)
    session.execute(delete(OutputSeries).where(OutputSeries.task_id == task_id))


@dataclass(frozen=True)
class BuiltSeries:
    spec: FilterSpec
    series_instance_uid: str
    description: str
    directory: Path
    instances: int

    @classmethod
    def from_job(cls, spec: FilterSpec, job: SeriesJob, instances: int) -> BuiltSeries:
        return cls(spec, job.series_instance_uid, job.series_description, job.outdir, instances)


def record_outputs(task: Task, built: list[BuiltSeries], *, session: Session) -> None:
    total = sum(b.instances for b in built)
    for item in built:
        session.add(
            OutputSeries(
                task_id=task.id,
                filter_id=item.spec.id,
                series_instance_uid=item.series_instance_uid,
                series_number=item.spec.series_number,
                description=item.description,
                directory=str(item.directory),
                instances=item.instances,
            )
        )
    for destination in task.destinations:
        # Instances a destination already acknowledged (an early delivery, issue 13) count.
        destination.total = total
        destination.sent = acknowledged(destination.id, session=session)
        destination.state = "sending" if destination.sent else "waiting"
        destination.reason = ""


def acknowledged(destination_pk: int, *, session: Session) -> int:
    """How many instances the destination has acknowledged, from the delivery progress."""
    return (
        session.scalar(
            select(func.count())
            .select_from(SentInstance)
            .where(SentInstance.destination_pk == destination_pk)
        )
        or 0
    )


def series_files(directory: Path) -> list[Path]:
    """One written series' files, in slice order."""
    return sorted(directory.glob("*.dcm"))


def output_files(task: Task) -> list[Path]:
    files: list[Path] = []
    for series in sorted(task.outputs, key=lambda s: s.series_number):
        files.extend(series_files(Path(series.directory)))
    return files
