"""What a memetic polish's descents do, read from finished jobs' tables.

A descent is a chain of ``gradient`` steps (each step's parent is the step before it); its best
point comes back on the grid as a ``gradient:polish`` candidate. Over the descents of the jobs
given, the mean of:

* gain:   exp(NLL at its start − its lowest NLL) − 1, the search ppl it took off its start;
* uphill: whether its second step scored above its first (the first Adam step went uphill);
* snap:   exp(NLL of its polished point − its lowest NLL) − 1, over polished points that were
  scored in full (none where the grid point had been seen before, or was pruned).

    python bench/descent_stats.py results/bench_strategies/embedded-8x-memetic-b0.25-s* \
        results/bench_strategies/embedded-8x-memetic-s? --paths
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from longrope_search.search.jobdir import JobDir


def descents(tables: pd.DataFrame) -> list[pd.DataFrame]:
    """Each descent's steps in order, from a job's tables."""
    steps = tables[tables.operator == "gradient"].set_index("candidate_id")
    after = {row.parents[0]: key for key, row in steps.iterrows()}
    out = []
    for key in [k for k, row in steps.iterrows() if row.parents[0] not in steps.index]:
        path = [key]
        while path[-1] in after:
            path.append(after[path[-1]])
        out.append(steps.loc[path])
    return out


def describe(path: pd.DataFrame, tables: pd.DataFrame) -> dict[str, float]:
    """One descent's generation, gain, uphill first step and grid snap (see the module)."""
    nll = path.mean_nll.to_numpy()
    polished = tables[(tables.operator == "gradient:polish") & (tables.status == "ok")
                      & (tables.parents.map(lambda p: len(p) > 0 and p[0] == path.index[-1]))]
    snap = np.exp(polished.mean_nll.iloc[0] - nll.min()) - 1 if len(polished) else np.nan
    return {"generation": int(path.generation.iloc[0]), "gain": np.exp(nll[0] - nll.min()) - 1,
            "uphill": float(len(nll) > 1 and nll[1] > nll[0]), "snap": snap,
            "ppl": " ".join(f"{v:.2f}" for v in np.exp(nll)),
            "polished": " ".join(f"{v:.2f}" for v in np.exp(polished.mean_nll))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jobs", nargs="+", type=Path, help="job folders")
    ap.add_argument("--paths", action="store_true", help="also each descent's search ppl")
    args = ap.parse_args()
    rows = []
    for job in args.jobs:
        tables = pd.read_parquet(JobDir(job).generations)
        rows += [{"job": job.name, **describe(p, tables)} for p in descents(tables)]
    table = pd.DataFrame(rows)
    if args.paths:
        print(table[["job", "generation", "ppl", "polished"]].to_string(index=False))
    print(f"{len(table)} descents in {len(args.jobs)} jobs: gain {table.gain.mean():.2%}, "
          f"first step uphill {table.uphill.mean():.0%}, snap {table.snap.mean():+.2%} "
          f"({table.snap.min():+.2%} to {table.snap.max():+.2%}, "
          f"{table.snap.notna().sum()} polished points)")


if __name__ == "__main__":
    main()
