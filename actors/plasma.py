"""Letting go of object-store pages a process has read (issue 13: memory per process).

A volume read from Ray's object store is a view into the store's shared mapping
(``/dev/shm/plasma*``): every page the process touches stays in its resident set until the
mapping goes, although the data lives in the store whatever the process does. Once a stage has
consumed part of such a volume, ``release_pages`` tells the kernel this process no longer needs
those pages (``madvise(MADV_DONTNEED)``): they leave its resident set and stay in the store, and
a later read would fault them in again, unchanged.

Only ever for a shared mapping: on private memory MADV_DONTNEED would zero the data, so an
array that is not (entirely) inside a shared file mapping is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from functools import cache

import numpy as np

logger = logging.getLogger(__name__)

MADV_DONTNEED = 4
PAGE = mmap.PAGESIZE


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc


def _inside_shared_mapping(start: int, end: int) -> bool:
    """Whether [start, end) lies in one shared, file-backed mapping of this process."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= start and end <= high:
                path = fields[5].strip() if len(fields) > 5 else ""
                return fields[1][3] == "s" and path.startswith("/")
    return False


def release_pages(array: np.ndarray) -> int:
    """Drop this process's resident pages of a read-only object-store view; returns the bytes
    released (0 when the array is not such a view, or too small to hold a whole page)."""
    if array.flags.writeable or array.flags.owndata or not array.flags.c_contiguous:
        return 0
    address = int(array.__array_interface__["data"][0])
    start = -(-address // PAGE) * PAGE  # whole pages inside the array only
    end = (address + array.nbytes) // PAGE * PAGE
    if end <= start or not _inside_shared_mapping(start, end):
        return 0
    if _libc().madvise(start, end - start, MADV_DONTNEED) != 0:
        logger.debug("madvise failed with errno %d", ctypes.get_errno())
        return 0
    return end - start
