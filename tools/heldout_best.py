"""Held-out perplexity of a finished job's result by either rule: its lowest complete evaluation
(a gradient step's exact λ included, the rule since commit 12690be) and its best candidate on
the grid (the rule before), both scored on the job's held-out documents.

    python tools/heldout_best.py results/search/embedded-8x-memetic --dtype float32

For job folders finished before the rule changed, whose best.json holds the grid candidate.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
from common import heldout_scorer, job_model, parser

from longrope_search.rope import Candidate
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir
from longrope_search.search.plan import plan_job
from longrope_search.search.trial import GRADIENT, OK


def results(tables: pd.DataFrame) -> dict[str, pd.Series]:
    """The row each rule picks among the complete evaluations (carried-over parents aside)."""
    ok = tables[(tables.operator != "parent") & (tables.status == OK)]
    grid = ok[ok.task != GRADIENT]
    return {"lowest": ok.loc[ok.mean_nll.idxmin()], "grid": grid.loc[grid.mean_nll.idxmin()]}


def main() -> None:
    ap = parser(__doc__, first_paragraph=True)
    ap.add_argument("job", type=Path, help="a finished job folder")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    job = JobDir(args.job)
    spec = load_job(job.spec)
    plan = plan_job(spec)
    loaded = job_model(spec, dtype=args.dtype)
    picks = results(pd.read_parquet(job.generations))
    cands = [Candidate(np.asarray(r.lambdas, dtype=np.float64), int(r.n_hat),
                       float(r.attention_factor), rule) for rule, r in picks.items()]
    scored = heldout_scorer(plan, loaded).score(cands)
    print("| rule | candidate | task | n̂ | search ppl | held-out ppl |\n|---|---|---|---|---|---|")
    for res, r in zip(scored, picks.values(), strict=True):
        print(f"| {res.candidate.name} | {r.candidate_id} | {r.task} | {r.n_hat} | "
              f"{math.exp(r.mean_nll):.4f} | {res.ppl:.4f} |")


if __name__ == "__main__":
    main()
