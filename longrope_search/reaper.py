"""Kill a local Ray cluster's processes as soon as the process that started it is gone.

A SIGKILL of ``run --ray`` runs no handler, so ``ray.shutdown`` never comes, and Ray's own
processes noticed only after about 80 s. :func:`reap_when_gone` starts this module as a
watcher in its own session: it polls the parent every half second and, once it has exited,
kills the processes it was given (those still the same: pid and start time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")


def start_time(pid: int) -> str | None:
    """A process's start time in clock ticks (``/proc/PID/stat`` field 22): with the pid, it
    names one process, never a later one that reused the pid. None: no such process."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (empty where ``/proc`` is not there)."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat") if PROC.is_dir() else ():
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def reap_when_gone(parent: int, pids: list[int]) -> None:
    """Start the watcher: kill ``pids`` as soon as ``parent`` has exited."""
    procs = [f"{pid}:{start}" for pid in pids if (start := start_time(pid)) is not None]
    if procs:
        subprocess.Popen([sys.executable, "-m", "longrope_search.reaper", str(parent), *procs],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str]) -> None:
    parent, procs = int(argv[0]), [p.split(":") for p in argv[1:]]
    while start_time(parent) is not None:
        time.sleep(0.5)
    for pid, start in procs:
        if start_time(int(pid)) == start:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
