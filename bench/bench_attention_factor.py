"""Is the attention factor m worth searching? A finished job's best λ and n̂, scored on the
held-out documents with m on a grid around the job's own.

LongRoPE multiplies cos and sin by m (attention logits by m², Eq. 3's companion): `su` sets
m = √(1 + ln s / ln L), YaRN 0.1·ln s + 1. Searching m alongside λ (the gradient gives ∂L/∂m for
free) would pay only if the held-out perplexity moves with m near the job's value; this bench
measures how much.

    python bench/bench_attention_factor.py results/bench_strategies/embedded-8x-memetic-s0 \
        results/bench_strategies_qwen2-c/qwen2-c-8x-evolution-s0
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from longrope_search.io import atomic_write, write_json
from longrope_search.model import load_model
from longrope_search.rope import Candidate
from longrope_search.search.fitness import scorer_for
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir
from longrope_search.search.plan import comparison_documents, plan_job

OFFSETS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15)  # m − the job's m


def measure(job: Path) -> tuple[list[str], dict]:
    """Held-out perplexity of ``job``'s best λ and n̂ with each m of the grid: a report section
    and its data."""
    job_dir = JobDir(job)
    spec, best = load_job(job_dir.spec), job_dir.finished_best()
    plan = plan_job(spec)
    loaded = load_model(spec.model_path, dtype=spec.scoring.dtype, device=spec.scoring.device)
    scorer = scorer_for(plan, loaded, comparison_documents(spec))
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
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", type=Path, nargs="+",
                    help="finished job folders (their job.yaml and best.json)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_attention_factor"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "bench/bench_attention_factor.py", *sys.argv[1:]])
    lines = ["# Held-out perplexity against the attention factor m", "",
             f"Command: `{command}`", ""]
    data = []
    for job in args.jobs:
        section, row = measure(job)
        lines += section
        data.append(row)
    atomic_write(args.out.with_suffix(".md"), lambda p: p.write_text("\n".join(lines)))
    write_json(args.out.with_suffix(".json"), {"command": command, "jobs": data})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
