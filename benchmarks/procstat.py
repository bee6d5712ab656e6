"""CPU time of processes from /proc: one process, a process with its descendants
(a supervisor and its worker processes), and redis-server found by the pid it
reports in ``INFO server``."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # fields from the 3rd (state) on


def proc_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) used so far by process ``pid``."""
    f = _stat(pid)
    if f is None:
        return 0.0, 0.0
    return int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f is not None:
                kids.setdefault(int(f[1]), []).append(int(entry))
    return kids


def tree_cpu(pids: list[int]) -> tuple[float, float]:
    """CPU seconds (user, system) of ``pids`` and all their descendants, the live ones
    and those already reaped (their time is in the parent's cutime/cstime)."""
    kids = _children()
    user = system = 0.0
    todo = list(pids)
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        f = _stat(pid)
        if f is None:
            continue
        user += (int(f[11]) + int(f[13])) / CLK_TCK
        system += (int(f[12]) + int(f[14])) / CLK_TCK
        todo += kids.get(pid, [])
    return user, system


def local_redis_pid(process_id: int) -> int | None:
    """``process_id`` (from INFO server) if it is a redis-server this machine can see."""
    try:
        comm = Path(f"/proc/{process_id}/comm").read_text()
    except OSError:
        return None
    return process_id if comm.startswith("redis") else None


def children_of(pids: list[int]) -> list[int]:
    """The live child processes of ``pids`` (the worker processes of supervisors)."""
    kids = _children()
    return sorted(k for p in pids for k in kids.get(p, []))
