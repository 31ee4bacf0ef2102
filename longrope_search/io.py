"""Atomic file output (nothing written is ever half-written) and exclusive locks."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from longrope_search.errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    Readers see the old file or the new one, never a partial one, even if the process dies.
    The file keeps the mode of the regular file it replaces, else gets the mode a plain
    ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600: an inference server
    run by another user reads an export.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_of(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _mode_of(path: Path) -> int:
    """The permissions a rewrite of ``path`` keeps: its own if it is a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0o666 & ~_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_umask()


def output_file(path: str | Path, option: str = "-o") -> Path:
    """``path`` if a command may write a file there: a new path in an existing folder, or a
    regular file it replaces. A directory, a symbolic link, a device, a FIFO or a socket is
    refused, naming ``option`` (a rename would put a file in the place of any of them)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir() and path.parent.exists():
            raise ConfigError(option, f"{path.parent} is not a folder",
                              "give a path in an existing folder") from None
        return path
    what = ("a directory" if stat.S_ISDIR(st.st_mode) else "a symbolic link"
            if stat.S_ISLNK(st.st_mode) else None if stat.S_ISREG(st.st_mode)
            else "a device, FIFO or socket")
    if what:
        raise ConfigError(option, f"{path} is {what}, not a file",
                          "give a file path (a new one, or a regular file to replace)"
                          + (f", e.g. {path / 'out.json'}" if stat.S_ISDIR(st.st_mode) else ""))
    return path


def writable_folder(path: str | Path, option: str) -> None:
    """Refuse a folder that cannot be made or written (a path through a file, a read-only or
    unwritable folder), before any work goes into what would be written there."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(option, f"{existing} is a file, so {path} cannot be a folder",
                          "give a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(option, f"{existing} is not writable", "give a folder this user may "
                          "write in (and on a file system that is not read-only)")


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
