"""This benchmark's own processes, from /proc (no psutil): who they are and the CPU they used."""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc (ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The name field may hold spaces and parentheses: split after its last ")".
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of a process (and, with ``reaped_children``, of the children it has waited
    for: a forking server's per-association processes), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the name: state is field 3, so utime (14), stime (15), cutime (16) and cstime (17)
    # sit at 11 to 14 here.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def label(pid: int) -> str:
    """``ray::FilterWorker.filter_and_write`` -> ``FilterWorker``; other processes by name."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        first = cmdline.read().split(b"\0", 1)[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.removeprefix("ray::").split(".", 1)[0].strip()
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()
