"""The folder shared with the processing service (REMOTE_PROTOCOL.md "Shared folder").

Files appear under their final name only when complete: written under a temporary name in the
same directory, fsynced, then renamed. Each side deletes only the files of its own tasks.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from petray.errors import TransientError

TO_PROCESS = "to_process"
PROCESSED = "processed"


def archive_name(task_id: str) -> str:
    if not task_id.isalnum():
        raise ValueError(f"task id {task_id!r} is not a plain identifier")
    return f"{task_id}.zip"


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that ``target`` is either absent or complete."""
    temporary = target.with_name(f".{target.name}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as src, temporary.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=4 * 2**20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        # A network share over a VPN comes and goes: worth retrying.
        raise TransientError(f"shared folder not writable/readable: {exc.strerror}") from exc


def result_present(shared_dir: Path, task_id: str) -> bool:
    """A result archive is in ``processed/`` under its final name and opens as a zip.

    The service renames a result into place only when it is complete, so the name alone
    suffices; the zip check keeps a stray or truncated file from starting a download that
    can only fail (the Downloader still verifies every checksum).
    """
    path = shared_dir / PROCESSED / archive_name(task_id)
    try:
        return path.is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False  # the share is away: nothing is found now, the next sweep looks again


def remove_task_files(shared_dir: Path, task_id: str) -> None:
    for folder in (TO_PROCESS, PROCESSED):
        (shared_dir / folder / archive_name(task_id)).unlink(missing_ok=True)
