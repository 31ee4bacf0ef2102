"""Is the attention factor m worth searching? A finished job's best λ and n̂, scored on the
held-out documents with m on a grid around the job's own.

LongRoPE multiplies cos and sin by m (attention logits by m², Eq. 3's companion): `su` sets
m = √(1 + ln s / ln L), YaRN 0.1·ln s + 1. Searching m alongside λ (the gradient gives ∂L/∂m for
free) would pay only if the held-out perplexity moves with m near the job's value; this bench
measures how much.

    python bench/bench_attention_factor.py results/bench_strategies/embedded-8x-memetic-s0 \
        results/bench_strategies/qwen2-c/qwen2-c-8x-evolution-s0   # → runs/bench_attention_factor/
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import (
    add_out,
    add_threads,
    command_line,
    finished_job,
    heldout_scorer,
    job_model,
    parser,
    set_threads,
    write_report,
)

from longrope_search.rope import Candidate
from longrope_search.search.plan import plan_job

OFFSETS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15)  # m − the job's m


def measure(job: Path) -> tuple[list[str], dict]:
    """Held-out perplexity of ``job``'s best λ and n̂ with each m of the grid: a report section
    and its data."""
    _, spec, best = finished_job(job)
    plan = plan_job(spec)
    scorer = heldout_scorer(plan, job_model(spec))
    m0 = float(best["attention_factor"])
    lambdas = np.asarray(best["lambdas"], dtype=np.float64)
    grid = [round(m0 + d, 4) for d in OFFSETS]
    results = scorer.score([Candidate(lambdas, int(best["n_hat"]), m, str(m)) for m in grid])
    ppl = dict(zip(grid, (r.ppl for r in results), strict=True))
    at_job = ppl[round(m0, 4)]
    m_best = min(ppl, key=ppl.get)
    lines = [f"## `{spec.name}`", "",
             f"Best λ and n̂ = {best['n_hat']} of the job, its m = {m0:.4f} "
             f"(`attention_factor: {spec.attention_factor}`); held-out documents of its spec. The "
             f"best m on this grid, {m_best:.4f}, is {100 * (at_job - ppl[m_best]) / at_job:.2f}% "
             "better than the job's.", "",
             "| m | held-out ppl | vs the job's m |", "|---|---|---|"]
    lines += [f"| {m:.4f} | {p:.3f} | {100 * (p - at_job) / at_job:+.2f}% |"
              for m, p in ppl.items()]
    return [*lines, ""], {"job": spec.name, "attention_factor": m0, "heldout_ppl": ppl}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("jobs", type=Path, nargs="+",
                    help="finished job folders (their job.yaml and best.json)")
    add_out(ap, "runs/bench_attention_factor/bench_attention_factor")
    add_threads(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    command = command_line()
    lines = ["# Held-out perplexity against the attention factor m", "",
             f"Command: `{command}`", ""]
    data = []
    for job in args.jobs:
        section, row = measure(job)
        lines += section
        data.append(row)
    write_report(args.out, "\n".join(lines), {"jobs": data}, command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
