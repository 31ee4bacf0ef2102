"""Factor tables: one Parquet file per generation, readable as one dataset.

``runs/<job>/generations/0003.parquet`` (the path is
:class:`~longrope_search.search.jobdir.JobDir`'s) — one row per candidate of that generation
(carried-over parents included: operator ``parent``, ``new`` false), in the order the strategy
proposed them. A generation is Algorithm 1's; strategies without one group their candidates in
blocks of the population size. The files carry ``generation`` (and in a chain ``stage``) as
integer columns, so pandas, polars and duckdb read the folder as one table::

    t = pd.read_parquet("runs/job/generations")
    t[t.new].groupby("generation").ppl.min()          # each generation's best new candidate
    pl.read_parquet("runs/job/generations/**/*.parquet")
    duckdb.sql("from 'runs/job/generations/**/*.parquet' where new order by ppl limit 5")

``ppl`` and ``mean_nll`` are the complete score (status ``ok``) and null otherwise; a candidate
pruned by early stopping keeps its per-document ``nll`` and ``partial_ppl``, the perplexity
on the ``documents_scored`` documents it was scored on, which is not comparable with ``ppl``.

The schema is versioned here; later versions only add nullable columns. Version 2 added the
cost of each evaluation in forward tokens (``cost_tokens``) and the job's cost spent when it was
recorded (``cost_spent_tokens``), so strategies compare at equal cost. Version 3 added ``task``:
``score`` for a candidate's perplexity, ``gradient`` for a gradient step (its loss at exact λ,
which the ``lambdas`` column holds, and ∂loss/∂λ); and ``seeded_from``, in a chained job's
stage the stage whose best seeded it; and ``needle_nll``, in needle mode each document's
answer NLL per needle depth (document × depth). Version 4 added ``generation``, ``stage``,
``new`` and ``partial_ppl``, left ``ppl`` and ``mean_nll`` null for incomplete scores, and
moved the tables out of Hive partitions (``generation=0003/part-0.parquet``), whose string
keys read back as categoricals; :func:`migrate` moves an older job's tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longrope_search.io import atomic_write
from longrope_search.search.jobdir import TABLE_SUFFIX, JobDir
from longrope_search.search.space import SearchSpace
from longrope_search.search.trial import MISSING, OK, PARENT, Evaluation, Individual, lambdas_of

SCHEMA_VERSION = 4


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
            pa.field("generation", pa.int32()),
            pa.field("stage", pa.int32()),
            pa.field("new", pa.bool_()),
            pa.field("partial_ppl", pa.float64()),
        ],
        metadata={"longrope_search.schema_version": str(SCHEMA_VERSION)},
    )


def write_generation(folder: JobDir, generation: int, individuals: Sequence[Individual],
                     evaluations: Mapping[str, Evaluation], space: SearchSpace,
                     attention_factor: float, cost_spent: Mapping[str, int] | None = None,
                     seeded_from: str | None = None) -> Path:
    """Write (atomically) the table of one generation; rerunning it rewrites the same file.

    ``cost_spent`` maps a candidate to the job's forward tokens spent when it was recorded.
    """
    rows = []
    cost_spent = cost_spent or {}
    job = folder.name
    stage = JobDir.stage_of(folder.table(generation))
    for ind in individuals:
        ev = evaluations.get(ind.key)
        complete = ev is not None and ev.status == OK and bool(ev.nll)
        rows.append({
            "job": job, "candidate_id": ind.key, "parents": list(ind.parents),
            "operator": ind.operator, "lambdas": lambdas_of(ind, space).tolist(),
            "n_hat": ind.genome.n_hat, "attention_factor": attention_factor,
            "nll": list(ev.nll) if ev else None,
            "documents_scored": len(ev.nll) if ev else None,
            "mean_nll": ev.mean_nll if complete else None,
            "ppl": ev.ppl if complete else None,
            "status": ev.status if ev else MISSING,
            "worker": ev.extra.get("worker") if ev else None,
            "seconds": ev.extra.get("seconds") if ev else None,
            "timestamp": (datetime.fromtimestamp(ev.extra["timestamp"], tz=timezone.utc)
                          if ev and "timestamp" in ev.extra else None),
            "cost_tokens": (ev.cost_tokens if ev and ind.is_new else 0) if ev else None,
            "cost_spent_tokens": cost_spent.get(ind.key),
            "task": ind.task, "seeded_from": seeded_from,
            "needle_nll": ev.extra.get("needle_nll") if ev else None,
            "generation": generation, "stage": stage, "new": ind.is_new,
            "partial_ppl": ev.ppl if ev and ev.nll and not complete else None,
        })
    table = pa.Table.from_pylist(rows, schema=schema(space.num_pairs))
    return atomic_write(folder.table(generation), lambda p: pq.write_table(table, p))


def migrate(folder: JobDir) -> int:
    """Move a job's tables from the Hive layout of schema versions 1–3 to files that carry
    ``generation``, ``stage``, ``new`` and ``partial_ppl`` (and null ``ppl`` where the score
    is partial), so a resumed job's folder stays one dataset; returns the tables moved."""
    moved = 0
    for old in folder.legacy_tables():
        t = pq.read_table(old).to_pylist()
        generation, stage = JobDir.generation_of(old), JobDir.stage_of(old)
        for row in t:
            complete = row["status"] == OK
            row.update(generation=generation, stage=stage, new=row["operator"] != PARENT,
                       partial_ppl=None if complete else row["ppl"])
            if not complete:
                row["ppl"] = row["mean_nll"] = None
        num_pairs = len(t[0]["lambdas"]) if t else 0
        new = old.parent.parent / f"{generation:04d}{TABLE_SUFFIX}"
        if stage is not None:
            new = old.parent.parent.parent / f"stage-{stage:02d}" / new.name
        table = pa.Table.from_pylist(t, schema=schema(num_pairs))
        atomic_write(new, lambda p, table=table: pq.write_table(table, p))
        old.unlink()
        old.parent.rmdir()
        moved += 1
    for stage_dir in folder.generations.glob("stage=*"):
        if not any(stage_dir.iterdir()):
            stage_dir.rmdir()
    return moved
