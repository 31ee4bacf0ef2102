"""Factor tables: one Parquet file per generation, Hive-partitioned, readable as one dataset.

``results/<job>/generations/generation=0003/part-0.parquet`` — one row per candidate of that
generation (carried-over parents included, operator ``parent``). The ``generation`` column comes
from the folder name (Hive partitioning), so pandas, polars and duckdb read the folder as one
table::

    pd.read_parquet("results/job/generations")
    pl.scan_parquet("results/job/generations/**/*.parquet", hive_partitioning=True)
    duckdb.sql("from read_parquet('results/job/generations/*/*.parquet', hive_partitioning=1)")

The schema is versioned here; later versions only add nullable columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longrope_search.io import atomic_write
from longrope_search.search.evolution import Evaluation, Individual
from longrope_search.search.space import SearchSpace

SCHEMA_VERSION = 1


def schema(num_pairs: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("job", pa.string(), nullable=False),
            pa.field("candidate_id", pa.string(), nullable=False),
            pa.field("parents", pa.list_(pa.string())),
            pa.field("operator", pa.string(), nullable=False),
            pa.field("lambdas", pa.list_(pa.float32(), num_pairs), nullable=False),
            pa.field("n_hat", pa.int32(), nullable=False),
            pa.field("attention_factor", pa.float64(), nullable=False),
            pa.field("nll", pa.list_(pa.float64())),
            pa.field("documents_scored", pa.int32()),
            pa.field("mean_nll", pa.float64()),
            pa.field("ppl", pa.float64()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("worker", pa.string()),
            pa.field("seconds", pa.float64()),
            pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        ],
        metadata={"longrope_search.schema_version": str(SCHEMA_VERSION)},
    )


def generation_path(root: str | Path, generation: int) -> Path:
    return Path(root) / f"generation={generation:04d}" / "part-0.parquet"


def write_generation(root: str | Path, job: str, generation: int,
                     individuals: Sequence[Individual], evaluations: dict[str, Evaluation],
                     space: SearchSpace, attention_factor: float) -> Path:
    """Write (atomically) the table of one generation; rerunning it rewrites the same file."""
    rows = []
    for ind in individuals:
        ev = evaluations.get(ind.key)
        rows.append({
            "job": job, "candidate_id": ind.key, "parents": list(ind.parents),
            "operator": ind.operator, "lambdas": space.lambdas(ind.genome).tolist(),
            "n_hat": ind.genome.n_hat, "attention_factor": attention_factor,
            "nll": list(ev.nll) if ev else None,
            "documents_scored": len(ev.nll) if ev else None,
            "mean_nll": ev.mean_nll if ev and ev.nll else None,
            "ppl": ev.ppl if ev and ev.nll else None,
            "status": ev.status if ev else "missing",
            "worker": ev.extra.get("worker") if ev else None,
            "seconds": ev.extra.get("seconds") if ev else None,
            "timestamp": (datetime.fromtimestamp(ev.extra["timestamp"], tz=timezone.utc)
                          if ev and "timestamp" in ev.extra else None),
        })
    table = pa.Table.from_pylist(rows, schema=schema(space.num_pairs))
    return atomic_write(generation_path(root, generation), lambda p: pq.write_table(table, p))
