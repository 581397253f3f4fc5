"""Series volumes built while their slices arrive, for the Packer (issue 13). Pure: no Ray.

The Compilator knows which task each claimed instance joins; it feeds each task's files here
as they are claimed and, once the series is ready, finishes its volume and hands it to the
Packer through the object store. Packing after the last slice is then only the archive write.

A head start only, never the record: the files and their rows stay what the task is. A task
this did not see from its first slice (the Compilator restarted, or the series was reopened),
one whose slice cannot be read, or one that would take the builders past their memory budget
is given up here, and the Packer reads the files as before. The Packer also reads the files
whenever the finished volume's slices are not exactly the task's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petray.errors import PermanentError
from petray.imaging.volume import PetVolume, StoredSlice, VolumeBuilder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedVolume:
    """A finished volume handed over: ``ref`` is its object in Ray's object store (typed Any:
    this module knows no Ray), the rest what the Packer needs besides the voxels."""

    ref: Any
    spacing_zyx: tuple[float, float, float]
    slice_paths: tuple[str, ...]

    @classmethod
    def of(cls, volume: PetVolume, ref: Any) -> PreparedVolume:
        return cls(ref, volume.spacing_zyx, tuple(str(p) for p in volume.slice_paths))

    def is_of(self, paths: Sequence[str]) -> bool:
        """Whether it was built from exactly these files (the task's, from the database)."""
        return len(paths) == len(self.slice_paths) and set(paths) == set(self.slice_paths)


class VolumeAssembler:
    """The volumes of the open tasks, one ``VolumeBuilder`` each, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._builders: dict[str, VolumeBuilder] = {}
        self._given_up: set[str] = set()

    @property
    def nbytes(self) -> int:
        return sum(builder.nbytes for builder in self._builders.values())

    def building(self) -> list[str]:
        return list(self._builders)

    def feed(
        self,
        task_id: str,
        paths: Sequence[str],
        *,
        expected: int | None,
        first: bool,
        stored: Sequence[StoredSlice | None] = (),
    ) -> None:
        """Add the files just claimed by ``task_id``; ``first``: its assembly opened with
        them (a builder is only started then, so that it holds every slice). ``stored[k]``,
        when given, is what the SCP learnt of ``paths[k]``: its pixels are then read without
        parsing the file."""
        if task_id in self._given_up:
            return
        builder = self._builders.get(task_id)
        if builder is None:
            if not first or self.budget_bytes <= 0:
                self._give_up(task_id, "not seen from its first slice")
                return
            builder = self._builders[task_id] = VolumeBuilder(expected)
        for k, path in enumerate(paths):
            if not path:
                self._give_up(task_id, "a slice without its file path")
                return
            try:
                builder.add(Path(path), stored[k] if k < len(stored) else None)
            except PermanentError as exc:
                # The Packer reads the files again and fails the task with this reason.
                self._give_up(task_id, str(exc))
                return
            if self.nbytes > self.budget_bytes:
                self._give_up(task_id, f"over the {self.budget_bytes >> 20} MiB budget")
                return

    def finish(self, task_id: str) -> PetVolume | None:
        """The ready task's volume, in slice order; None when it was given up or the series
        does not make one volume (the Packer then names why, from the files)."""
        self._given_up.discard(task_id)
        builder = self._builders.pop(task_id, None)
        if builder is None:
            return None
        try:
            return builder.finish()
        except PermanentError as exc:
            logger.info("task %s: no volume built on arrival (%s)", task_id, exc)
            return None

    def drop(self, task_id: str) -> None:
        """Forget the task (aborted, deleted, cancelled)."""
        self._given_up.discard(task_id)
        self._builders.pop(task_id, None)

    def clear(self) -> None:
        """Forget every builder: the Compilator rebuilt its state from the database, and a
        builder may hold slices of a batch that was rolled back."""
        self._builders.clear()
        self._given_up.clear()

    def _give_up(self, task_id: str, why: str) -> None:
        if self._builders.pop(task_id, None) is not None or task_id not in self._given_up:
            logger.info("task %s: its volume is not built on arrival (%s)", task_id, why)
        self._given_up.add(task_id)
