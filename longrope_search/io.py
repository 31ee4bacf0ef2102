"""Atomic file output (nothing written is ever half-written) and exclusive locks."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    Readers see the old file or the new one, never a partial one, even if the process dies.
    The file gets the mode a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s 0600: an inference server run by another user reads an export.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def write_table(path: str | Path, table: pa.Table) -> Path:
    """Write a table as Parquet or CSV, chosen by the file's suffix."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        return atomic_write(path, lambda p: pq.write_table(table, p))
    if suffix == ".csv":
        return atomic_write(path, lambda p: pacsv.write_csv(table, p))
    raise ValueError(f"unsupported table format {suffix!r} (use .parquet or .csv)")


def _umask() -> int:
    """The process's umask, read without changing it (``/proc``) where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is the pid it wrote, or "?"."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by pid {holder}")
        self.holder = holder


def take_lock(path: str | Path) -> int:
    """An exclusive ``flock`` on ``path`` (created), with this process's pid written in it;
    returns the descriptor to hold (closing it releases the lock; so does the kernel when the
    process dies, so a kill leaves nothing to clean up). A folder is locked as itself, with no
    file added and no pid kept. Raises :class:`LockHeld`."""
    folder = Path(path).is_dir()
    fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "?" if folder else os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise LockHeld(holder or "?") from None
    if not folder:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def lock_holder(path: str | Path) -> str | None:
    """The pid written in a lock file that :func:`take_lock` holds ("?" where none is
    written), or None when no process holds it; reads only, never creates the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
