"""Every file petray keeps for one task, in one place (issue 10).

A task's files are spread over four roots: received instances (paths recorded on the instance
rows), work archives and previews under ``work/``, output series under ``output/`` and the
archives in the shared folder. Deleting a task and purging it by retention both remove exactly
``TaskFiles.paths``; the stages that write those files take their names from here too, so a new
kind of task file is added once and is never left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import Instance, OutputSeries
from petray.service.shared_folder import PROCESSED, TO_PROCESS, archive_name
from petray.settings import Settings

log = logging.getLogger(__name__)

MIP_DIR = "mip"


@dataclass(frozen=True)
class TaskFiles:
    """The paths of one task's files; the fixed ones are derived, the others read from rows."""

    task_id: str
    work_dir: Path
    output_dir: Path
    shared_dir: Path

    def __post_init__(self) -> None:
        # Task ids become file names: only plain identifiers (uuid hex) may do that.
        archive_name(self.task_id)

    @classmethod
    def of(cls, settings: Settings, task_id: str) -> TaskFiles:
        return cls(
            task_id=task_id,
            work_dir=settings.work_dir,
            output_dir=settings.output_dir,
            shared_dir=settings.resolved_shared_dir,
        )

    @property
    def archive(self) -> Path:
        """The de-identified upload archive the Packer writes."""
        return self.work_dir / f"{self.task_id}.zip"

    @property
    def result_archive(self) -> Path:
        """The service's result, as the Downloader copied it from the shared folder."""
        return self.work_dir / f"{self.task_id}.result.zip"

    @property
    def previews(self) -> Path:
        """MIP previews rendered for the console."""
        return self.work_dir / MIP_DIR / self.task_id

    @property
    def outputs(self) -> Path:
        """Root of the task's output series (one directory per filter)."""
        return self.output_dir / self.task_id

    @property
    def to_process(self) -> Path:
        return self.shared_dir / TO_PROCESS / archive_name(self.task_id)

    @property
    def processed(self) -> Path:
        return self.shared_dir / PROCESSED / archive_name(self.task_id)

    def fixed_paths(self) -> list[Path]:
        return [
            self.archive,
            self.result_archive,
            self.previews,
            self.outputs,
            self.to_process,
            self.processed,
        ]

    def paths(self, *, session: Session) -> list[Path]:
        """Everything of the task: recorded instance files and output series, then the rest."""
        return _unique([*recorded_paths(self.task_id, session=session), *self.fixed_paths()])


def recorded_paths(task_id: str, *, session: Session) -> list[Path]:
    """The task's files that rows name: received instances and output series directories."""
    instances = session.scalars(
        select(Instance.path).where(Instance.task_id == task_id).order_by(Instance.id)
    )
    outputs = session.scalars(select(OutputSeries.directory).where(OutputSeries.task_id == task_id))
    return [Path(p) for p in instances] + [Path(d) for d in outputs]


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without those inside another one (an output series inside the outputs root)."""
    given = _unique(paths)
    chosen = set(given)
    return [p for p in given if not any(parent in chosen for parent in p.parents)]


@dataclass(frozen=True)
class FileCount:
    """How many files and bytes a set of paths holds (or held, once removed)."""

    files: int = 0
    bytes: int = 0

    def __add__(self, other: FileCount) -> FileCount:
        return FileCount(self.files + other.files, self.bytes + other.bytes)


def _walk(path: Path) -> FileCount:
    try:
        if path.is_symlink() or path.is_file():
            return FileCount(1, path.lstat().st_size)
        if not path.is_dir():
            return FileCount()
    except OSError:
        return FileCount()
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += (Path(root) / name).lstat().st_size
                files += 1
            except OSError:
                continue
    return FileCount(files, size)


def measure(paths: Iterable[Path]) -> FileCount:
    """Files and bytes under ``paths`` (missing paths count nothing)."""
    total = FileCount()
    for path in _outermost(paths):
        total += _walk(path)
    return total


def remove(paths: Iterable[Path]) -> FileCount:
    """Remove files and directory trees; missing ones are fine. Returns what was removed.

    A path that cannot be removed is logged (by name only: names are UIDs or task ids) and
    skipped, so one stuck file never keeps the rest of a task on disk.
    """
    removed = FileCount()
    for path in _outermost(paths):
        found = _walk(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
        except OSError as exc:
            log.warning("could not remove %s: %s", path.name, exc.strerror)
            continue
        removed += found
    return removed
