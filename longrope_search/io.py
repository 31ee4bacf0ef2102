"""Atomic file output: nothing written is ever half-written."""

from __future__ import annotations

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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
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
