"""What a memetic polish's descents do, read from finished jobs' tables.

A descent is a chain of ``gradient`` steps (each step's parent is the step before it); its best
point comes back on the grid as a ``gradient:polish`` candidate. Over the descents of the jobs
given, the mean of:

* gain:   exp(NLL at its start − its lowest NLL) − 1, the search ppl it took off its start;
* uphill: whether its second step scored above its first (the first Adam step went uphill);
* snap:   exp(NLL of its polished point − its lowest NLL) − 1, over polished points that were
  scored in full (none where the grid point had been seen before, or was pruned).

With ``--rescore``, points built from each descent's iterates x = log λ are scored on the job's
search documents and compared with its best iterate x_b (exp(NLL − lowest NLL) − 1): the mean
of its last 3 and last 5 iterates, an exponential average (weights ½ per step back), and the
extrapolations Π(x_b + α·(x_b − x_0)), α = ½ and 1, past its best along its whole move.

    python tools/descent_stats.py results/bench_strategies/embedded-8x-memetic-b0.25-s* \
        results/bench_strategies/embedded-8x-memetic-s? --paths
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
from common import add_threads, descents, job_scorer, parser, set_threads

from longrope_search.rope import Candidate
from longrope_search.search.jobdir import JobDir
from longrope_search.search.strategies.gradient import isotonic


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


def iterate_points(path: pd.DataFrame) -> dict[str, np.ndarray]:
    """λ of the points built from one descent's iterates (see the module)."""
    x = np.log(np.stack([np.asarray(lam) for lam in path.lambdas]))  # (steps, pairs)
    weights = 0.5 ** np.arange(len(x))[::-1]
    best = x[int(np.argmin(path.mean_nll.to_numpy()))]
    points = {"mean of last 3": x[-3:].mean(0), "mean of last 5": x[-5:].mean(0),
              "exponential average": weights @ x / weights.sum()}
    points |= {f"extrapolated α={a:g}": isotonic(best + a * (best - x[0])) for a in (0.5, 1)}
    return {name: np.exp(v) for name, v in points.items()}


def rescore(jobs: list[Path]) -> pd.DataFrame:
    """Each descent's iterate points against its best iterate, scored on its job's documents."""
    rows = []
    for job in jobs:
        _, _, scorer = job_scorer(job)
        for path in descents(pd.read_parquet(JobDir(job).generations)):
            if len(path) < 5:
                continue
            first = path.iloc[0]
            cands = [Candidate(lam, int(first.n_hat), float(first.attention_factor), name)
                     for name, lam in iterate_points(path).items()]
            lowest = path.mean_nll.min()
            rows += [{"job": job.name, "point": r.candidate.name,
                      "vs best": np.exp(r.mean_nll - lowest) - 1} for r in scorer.score(cands)]
    return pd.DataFrame(rows)


def main() -> None:
    ap = parser(__doc__, first_paragraph=True)
    ap.add_argument("jobs", nargs="+", type=Path, help="job folders")
    ap.add_argument("--paths", action="store_true", help="also each descent's search ppl")
    ap.add_argument("--rescore", action="store_true",
                    help="also score averages and extrapolations of each descent's iterates")
    add_threads(ap)
    args = ap.parse_args()
    set_threads(args.threads)
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
    if args.rescore:
        points = rescore(args.jobs).groupby("point", sort=False)["vs best"]
        print(pd.DataFrame({"mean": points.mean(), "median": points.median(),
                            "below best": points.apply(lambda d: f"{(d < 0).sum()}/{len(d)}")
                            }).to_string(float_format=lambda v: f"{v:+.2%}"))


if __name__ == "__main__":
    main()
