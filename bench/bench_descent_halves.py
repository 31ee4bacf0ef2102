"""Would a memetic polish's descents go further on half of the documents a step?

A descent of ``memetic`` takes 8 steps of projected Adam on x = log λ, each a forward and a
backward of every search document. This bench redoes the recorded descents of finished memetic
jobs from the same starts (λ, n̂, m) at the same cost with 16 steps, each on one half of the
search documents in turn (even, then odd): a minibatch of the fitness itself. Its best point is
chosen without another evaluation, by the mean of two consecutive steps' half losses (both
halves, so every document), credited to the later point; that point and the last one are then
scored on all the search documents and compared with the recorded descent's best step
(exp(NLL − its lowest NLL) − 1; below zero: the half-document descent found a better point).

    python bench/bench_descent_halves.py results/bench_strategies/embedded-8x-memetic-b0.25-s* \
        --threads 2                      # → runs/bench_descent_halves/bench_descent_halves.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from common import (
    add_out,
    add_threads,
    command_line,
    descents,
    job_scorer,
    parser,
    set_threads,
    write_report,
)

from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import Candidate
from longrope_search.search.jobdir import JobDir
from longrope_search.search.strategies.gradient import LogLambda, Start

LR = 0.05  # memetic's default


def half_descent(halves: list[PerplexityScorer], coords: LogLambda, first: pd.Series,
                 steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` half-document steps from a recorded descent's first point; (the point with
    the lowest two-step mean loss, the last point), as x = log λ."""
    n_hat, m = int(first.n_hat), float(first.attention_factor)
    start = Start("half", np.log(np.asarray(first.lambdas))[coords.space.searched], n_hat)
    losses, points = [], []
    for t in range(steps):
        g = gradient(halves[t % 2], Candidate(coords.lambdas(start.x), n_hat, m, "half"))
        losses.append(g.mean_nll)
        points.append(start.x.copy())
        coords.move(start, g.lambdas, LR)
    pairs = np.add(losses[1:], losses[:-1]) / 2
    return points[1 + int(np.argmin(pairs))], points[-1]


def redo(job: Path, min_generation: int) -> list[dict]:
    """Every recorded descent of ``job`` from ``min_generation`` on, against its redo."""
    plan, loaded, search = job_scorer(job)
    halves = [PerplexityScorer(loaded.model, plan.geometry, search.documents[h::2],
                               length=plan.target_length) for h in (0, 1)]
    coords = LogLambda(plan.space)
    rows = []
    for path in descents(pd.read_parquet(JobDir(job).generations)):
        first = path.iloc[0]
        if first.generation < min_generation:
            continue
        chosen, last = half_descent(halves, coords, first, 2 * len(path))
        scored = search.score([Candidate(coords.lambdas(x), int(first.n_hat),
                                         float(first.attention_factor), name)
                               for name, x in (("chosen", chosen), ("last", last))])
        nll = path.mean_nll.to_numpy()
        rows.append({"job": job.name, "generation": int(first.generation),
                     "steps": len(path), "start_ppl": float(np.exp(nll[0])),
                     "best_ppl": float(np.exp(nll.min())),
                     **{f"half_{r.candidate.name}_ppl": r.ppl for r in scored}})
        print(rows[-1], flush=True)
    return rows


def markdown(command: str, table: pd.DataFrame) -> str:
    lines = ["# Memetic's descents redone on half of the documents a step, at the same cost", "",
             f"Command: `{command}`", "",
             f"{len(table)} descents. Search ppl; \"vs best\": exp(NLL − the recorded descent's "
             "lowest NLL) − 1, mean (median), and how many descents it beat.", "",
             "| point | vs best | below best | gain on its start |", "|---|---|---|---|"]
    for col, name in (("best_ppl", "recorded descent, best of its steps"),
                      ("half_chosen_ppl", "half-document descent, chosen point"),
                      ("half_last_ppl", "half-document descent, last point")):
        d = table[col] / table.best_ppl - 1
        gain = 1 - table[col] / table.start_ppl
        lines.append(f"| {name} | {d.mean():+.2%} ({d.median():+.2%}) | {(d < 0).sum()}"
                     f"/{len(d)} | {gain.mean():.2%} |")
    lines += ["", "| job | generation | steps | start | recorded best | half: chosen "
              "| half: last |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.job} | {r.generation} | {r.steps} | {r.start_ppl:.3f} | {r.best_ppl:.3f} "
              f"| {r.half_chosen_ppl:.3f} | {r.half_last_ppl:.3f} |" for r in table.itertuples()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = parser(__doc__, first_paragraph=True)
    ap.add_argument("jobs", nargs="+", type=Path, help="finished memetic job folders")
    ap.add_argument("--min-generation", type=int, default=3,
                    help="redo the descents of this generation's polish and later ones")
    add_out(ap, "runs/bench_descent_halves/bench_descent_halves")
    add_threads(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    command = command_line()
    table = pd.DataFrame([r for job in args.jobs for r in redo(job, args.min_generation)])
    write_report(args.out, markdown(command, table), {"rows": table.to_dict("records")}, command)


if __name__ == "__main__":
    main()
