"""Chained stages against a direct search, at the same total cost (forward tokens).

The chain 2× → 4× → 8× spends a quarter, a quarter and a half of the budget (each stage seeded
with the previous best mapped to its ratio); the direct search spends all of it at 8×. Both use
the config's settings and documents; the held-out perplexity of each final best at 8× answers
whether the chain pays. Runs are ordinary resumable jobs in ``--runs-dir``.

    python bench/bench_chain.py --fraction 0.25      # → runs/bench_chain/bench_chain.md
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import yaml
from common import (
    add_out,
    add_runs_dir,
    add_threads,
    command_line,
    parser,
    set_threads,
    write_report,
)

from longrope_search.search.job import job_from_dict
from longrope_search.search.jobdir import JobDir
from longrope_search.search.plan import plan_job
from longrope_search.search.run import run_job

SPLIT = (0.25, 0.25, 0.5)  # of the budget, per stage


def specs(config: Path, fraction: float, strategy: str, runs: Path) -> dict:
    data = yaml.safe_load(config.read_text())
    base = job_from_dict(data)
    plan = plan_job(base)
    tokens = int(fraction * base.search.budget * base.k_documents * plan.target_length)
    common = {**data, "strategy": strategy, "results_dir": str(runs)}
    s = plan.extension_ratio
    direct = job_from_dict({**common, "name": f"direct-{strategy}",
                            "budget": {"evaluations": 10**6, "tokens": tokens}})
    stages = [{"extension_ratio": r, "budget": {"evaluations": 10**6, "tokens": int(f * tokens)}}
              for r, f in zip((s / 4, s / 2, s), SPLIT, strict=True)]
    chain = job_from_dict({**{k: v for k, v in common.items()
                              if k not in ("extension_ratio", "target_length")},
                           "name": f"chain-{strategy}", "stages": stages})
    return {"direct": direct, "chain": chain, "tokens": tokens}


def heldout(job_dir: Path) -> float:
    rows = JobDir(job_dir).read_comparison()["rows"]
    return next(r["ppl"] for r in rows if r["method"] == "best")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/embedded-8x.yaml"))
    ap.add_argument("--fraction", type=float, default=0.25,
                    help="budget as a fraction of the config's Algorithm 1 budget")
    ap.add_argument("--strategy", default="evolution")
    add_runs_dir(ap, "runs/bench_chain")
    add_out(ap, "runs/bench_chain/bench_chain")
    add_threads(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    jobs = specs(args.config, args.fraction, args.strategy, args.runs_dir)
    rows = {}
    for name in ("direct", "chain"):
        t0 = time.time()
        run_job(jobs[name], progress=True)
        folder = jobs[name].job_dir
        best = JobDir(folder).finished_best()
        rows[name] = {"heldout_ppl": heldout(folder), "search_ppl": best["search_ppl"],
                      "seconds_this_call": round(time.time() - t0, 1),
                      "cost_tokens": int(pd.read_parquet(folder / "generations").cost_tokens
                                         .sum())}
    base = rows["direct"]["heldout_ppl"]
    lines = ["# Chained stages against a direct search at equal cost", "",
             f"Command: `{command_line()}`", "",
             f"Budget: {jobs['tokens'] / 1e6:.2f}M forward tokens each ({args.fraction:g} of "
             f"the config's Algorithm 1 budget), strategy `{args.strategy}`; the chain spends "
             f"{', '.join(f'{f:g}' for f in SPLIT)} of it on its stages (2×, 4×, 8×).", "",
             "| run | cost spent (M tokens) | search ppl at 8× | held-out ppl at 8× | vs direct |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['cost_tokens'] / 1e6:.2f} | {r['search_ppl']:.3f} | "
                     f"{r['heldout_ppl']:.3f} | {100 * (r['heldout_ppl'] / base - 1):+.2f}% |")
    write_report(args.out, "\n".join(lines) + "\n", {"rows": rows}, command_line())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
