"""Factor tables: one Parquet file per generation, Hive-partitioned, readable as one dataset.

``results/<job>/generations/generation=0003/part-0.parquet`` (the path is
:class:`~longrope_search.search.jobdir.JobDir`'s) — one row per candidate of that generation
(carried-over parents included, operator ``parent``), in the order the strategy proposed them.
A generation is Algorithm 1's; strategies without one group their candidates in blocks of the
population size. The ``generation`` column comes
from the folder name (Hive partitioning), so pandas, polars and duckdb read the folder as one
table::

    pd.read_parquet("results/job/generations")
    pl.scan_parquet("results/job/generations/**/*.parquet", hive_partitioning=True)
    duckdb.sql("from read_parquet('results/job/generations/*/*.parquet', hive_partitioning=1)")

The schema is versioned here; later versions only add nullable columns. Version 2 added the
cost of each evaluation in forward tokens (``cost_tokens``) and the job's cost spent when it was
recorded (``cost_spent_tokens``), so strategies compare at equal cost. Version 3 added ``task``:
``score`` for a candidate's perplexity, ``gradient`` for a gradient step (its loss at exact λ,
which the ``lambdas`` column holds, and ∂loss/∂λ); and ``seeded_from``, in a chained job's
stage the stage whose best seeded it (the stage itself is the ``stage=`` partition); and
``needle_nll``, in needle mode each document's answer NLL per needle depth (document × depth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longrope_search.io import atomic_write
from longrope_search.search.jobdir import JobDir
from longrope_search.search.space import SearchSpace
from longrope_search.search.trial import Evaluation, Individual, lambdas_of

SCHEMA_VERSION = 3


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
            pa.field("cost_tokens", pa.int64()),
            pa.field("cost_spent_tokens", pa.int64()),
            pa.field("task", pa.string()),
            pa.field("seeded_from", pa.string()),
            pa.field("needle_nll", pa.list_(pa.list_(pa.float64()))),
        ],
        metadata={"longrope_search.schema_version": str(SCHEMA_VERSION)},
    )


def write_generation(job_dir: JobDir, generation: int, individuals: Sequence[Individual],
                     evaluations: Mapping[str, Evaluation], space: SearchSpace,
                     attention_factor: float, cost_spent: Mapping[str, int] | None = None,
                     seeded_from: str | None = None) -> Path:
    """Write (atomically) the table of one generation; rerunning it rewrites the same file.

    ``cost_spent`` maps a candidate to the job's forward tokens spent when it was recorded.
    """
    rows = []
    cost_spent = cost_spent or {}
    job = job_dir.name
    for ind in individuals:
        ev = evaluations.get(ind.key)
        rows.append({
            "job": job, "candidate_id": ind.key, "parents": list(ind.parents),
            "operator": ind.operator, "lambdas": lambdas_of(ind, space).tolist(),
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
            "cost_tokens": (ev.cost_tokens if ev and ind.is_new else 0) if ev else None,
            "cost_spent_tokens": cost_spent.get(ind.key),
            "task": ind.task, "seeded_from": seeded_from,
            "needle_nll": ev.extra.get("needle_nll") if ev else None,
        })
    table = pa.Table.from_pylist(rows, schema=schema(space.num_pairs))
    return atomic_write(job_dir.table(generation), lambda p: pq.write_table(table, p))
