"""Search strategies at equal cost: every strategy on the same job, the same forward tokens.

The job is a config (default ``configs/embedded-8x.yaml``: the embedded model at 8×, 8 search
documents, early stopping on). Each strategy and seed runs it with a budget in forward tokens:
the cost of the config's Algorithm 1 budget in complete evaluations (the paper's 1,344 =
64 + 40·32, × documents × L'), so a strategy that prunes more evaluates more candidates for the
same compute. Each run is an ordinary resumable
job in ``--runs-dir``: stop the bench and run it again, and it continues from the ledgers.

From each run's tables: the best search perplexity against cost spent; and, at fractions of the
full budget, the best-so-far candidate scored on the held-out documents (never used as fitness).
Writes ``<out>.md``, ``<out>.json`` and ``<out>.png`` (curves: mean over seeds, band min–max).

    python bench/bench_strategies.py --strategies evolution,steady --seeds 0,1,2
                                       # → runs/bench_strategies/bench_strategies.{md,json,png}
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from common import (
    add_out,
    add_runs_dir,
    add_threads,
    command_line,
    heldout_scorer,
    job_model,
    parser,
    set_threads,
    write_report,
)

from longrope_search.io import atomic_write, write_json
from longrope_search.model import LoadedModel
from longrope_search.rope import seed_candidate
from longrope_search.search.job import JobSpec, job_from_dict
from longrope_search.search.jobdir import JobDir
from longrope_search.search.plan import plan_job
from longrope_search.search.run import run_search

CHECKPOINTS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)  # fractions of the full budget reported


def full_budget(base: JobSpec) -> int:
    """Forward tokens of the config's Algorithm 1 budget in complete evaluations."""
    return base.search.budget * base.k_documents * plan_job(base).target_length


def job(config: Path, strategy: str, seed: int, runs_dir: Path, fraction: float = 1.0) -> JobSpec:
    """The bench's job for one strategy and seed, with ``fraction`` of the full budget (a run
    with less than all of it is its own job: a strategy plans its end by its budget)."""
    data = yaml.safe_load(config.read_text())
    base = job_from_dict(data)
    short = "" if fraction == 1 else f"-b{fraction:g}"
    return job_from_dict({**data, "name": f"{base.name}-{strategy}{short}-s{seed}",
                          "seed": seed, "strategy": strategy, "results_dir": str(runs_dir),
                          "budget": {"evaluations": 10 * base.search.budget,
                                     "tokens": int(fraction * full_budget(base))}})


def run(spec: JobSpec, loaded: LoadedModel) -> float:
    """Run (or finish) one job; the wall seconds this call took."""
    t0 = time.time()
    if not JobDir(spec.job_dir).best.is_file():
        run_search(spec, loaded=loaded, progress=True)
    return time.time() - t0


def best_so_far(tables: pd.DataFrame, budget: float, finished: bool = True,
                limit: float | None = None) -> pd.DataFrame:
    """Per checkpoint (a fraction of ``budget``): the best complete candidate recorded by that
    cost; none for a checkpoint an unfinished run has not reached or past the run's own budget
    ``limit``."""
    new = tables[(tables.operator != "parent") & (tables.status == "ok")]
    new = new.sort_values("cost_spent_tokens")
    reached = tables.cost_spent_tokens.max()
    rows = []
    for frac in CHECKPOINTS:
        seen = new[new.cost_spent_tokens <= frac * budget + 1e-9]
        beyond = limit is not None and frac * budget > limit + 1e-9
        if beyond or (not finished and frac * budget > reached):
            seen = seen.iloc[:0]
        top = seen.loc[seen.mean_nll.idxmin()] if len(seen) else None
        rows.append({"fraction": frac, "cost_tokens": int(frac * budget),
                     "candidate_id": None if top is None else top.candidate_id,
                     "search_ppl": None if top is None else math.exp(top.mean_nll),
                     "lambdas": None if top is None else top.lambdas, "n_hat": 0 if top is None
                     else int(top.n_hat), "attention_factor": None if top is None
                     else float(top.attention_factor)})
    return pd.DataFrame(rows)


def curve(tables: pd.DataFrame) -> tuple[list[int], list[float]]:
    """Best search perplexity against cost spent, one point per complete candidate."""
    new = tables[tables.operator != "parent"].sort_values("cost_spent_tokens")
    ok = new.status == "ok"
    best = np.minimum.accumulate(np.where(ok, new.mean_nll, np.inf))
    keep = np.isfinite(best)
    return (new.cost_spent_tokens[keep].astype(int).tolist(),
            np.exp(best[keep]).round(4).tolist())


def heldout(spec: JobSpec, loaded: LoadedModel, points: pd.DataFrame,
            cache: dict[str, float]) -> list[float | None]:
    """Held-out perplexity of each checkpoint's candidate (scored once per candidate)."""
    from longrope_search.rope import Candidate

    plan = plan_job(spec)
    todo = {r.candidate_id: Candidate(np.asarray(r.lambdas, dtype=np.float64), r.n_hat,
                                      r.attention_factor, r.candidate_id)
            for r in points.itertuples()
            if isinstance(r.candidate_id, str) and r.candidate_id not in cache}
    if todo:
        scorer = heldout_scorer(plan, loaded)
        for res in scorer.score(list(todo.values())):
            cache[res.candidate.name] = res.ppl
    return [cache.get(c) if isinstance(c, str) else None for c in points.candidate_id]


def baselines(spec: JobSpec, loaded: LoadedModel) -> dict[str, float]:
    plan = plan_job(spec)
    scorer = heldout_scorer(plan, loaded)
    cands = [seed_candidate(n, plan.geometry, plan.extension_ratio) for n in ("pi", "ntk", "yarn")]
    return {r.candidate.name: r.ppl for r in scorer.score(cands)}


def summarize(runs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in runs:
        for p in r["checkpoints"]:
            rows.append({"strategy": r["strategy"], "seed": r["seed"], **p})
    df = pd.DataFrame(rows)
    return df.groupby(["strategy", "fraction"]).agg(
        runs=("search_ppl", "count"), search_mean=("search_ppl", "mean"),
        search_min=("search_ppl", "min"), search_max=("search_ppl", "max"),
        heldout_mean=("heldout_ppl", "mean"), heldout_min=("heldout_ppl", "min"),
        heldout_max=("heldout_ppl", "max")).reset_index()


def markdown(command: str, runs: list[dict[str, Any]], summary: pd.DataFrame,
             base: dict[str, float], spec: JobSpec, full: int, notes: str = "") -> str:
    lines = ["# Search strategies at equal cost", "", f"Command: `{command}`", "",
             f"Full budget: {full / 1e6:.2f}M forward tokens (the cost of "
             f"{spec.search.budget} complete evaluations); curves in the PNG beside this.",
             "", *([notes.strip(), ""] if notes.strip() else []),
             "Held-out perplexity of the hand-made methods: "
             + ", ".join(f"{k} {v:.2f}" for k, v in base.items()) + ".", "",
             "| strategy | budget | runs | search ppl mean (min–max) | held-out ppl mean "
             "(min–max) | vs best hand-made |", "|---|---|---|---|---|---|"]
    best_hand = min(base.values())
    for r in summary.itertuples():
        if not r.runs:  # no run has reached this cost yet
            continue
        gain = 100 * (best_hand - r.heldout_mean) / best_hand if r.heldout_mean else float("nan")
        lines.append(f"| {r.strategy} | {r.fraction:g} | {r.runs} | {r.search_mean:.3f} "
                     f"({r.search_min:.3f}–{r.search_max:.3f}) | {r.heldout_mean:.3f} "
                     f"({r.heldout_min:.3f}–{r.heldout_max:.3f}) | {gain:+.2f}% |")
    lines += ["", "| run | finished | evaluations | pruned | cost spent (M tokens) | wall s "
              "(this call) | best search ppl | its held-out ppl |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        last = [p for p in r["checkpoints"] if p["search_ppl"] == p["search_ppl"]][-1]  # not NaN
        lines.append(f"| {r['strategy']} s{r['seed']} | {'yes' if r['finished'] else 'no'} | "
                     f"{r['evaluations']} | {r['pruned']} | {r['cost_spent_tokens'] / 1e6:.2f} "
                     f"| {r['seconds']:.0f} | {last['search_ppl']:.3f} | "
                     f"{last['heldout_ppl']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], base: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        grid = np.linspace(0, max(max(r["curve"][0]) for r in mine), 200)
        ys = np.array([np.interp(grid, r["curve"][0], r["curve"][1], left=np.nan)
                       for r in mine])
        with warnings.catch_warnings():  # before any run's first complete candidate: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = (np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0))
        (line,) = ax1.plot(grid / 1e6, mean, label=strategy)
        ax1.fill_between(grid / 1e6, low, high, color=line.get_color(), alpha=0.2)
        pts = pd.DataFrame([{**p, "seed": r["seed"]} for r in mine for p in r["checkpoints"]])
        g = pts.groupby("cost_tokens").heldout_ppl
        ax2.errorbar(g.mean().index / 1e6, g.mean(), yerr=[g.mean() - g.min(), g.max() - g.mean()],
                     marker="o", capsize=3, label=strategy, color=line.get_color())
    near = min(base.values())  # the best hand-made method; the others are far above
    ax2.axhline(near, ls=":", color="grey")
    ax2.annotate(min(base, key=base.get), (0, near), fontsize=8, color="grey")
    ax1.set_ylim(top=np.nanmin([r["curve"][1][0] for r in runs]) * 1.1)
    ax1.set(xlabel="forward tokens spent (M)", ylabel="best search ppl",
            title="best search perplexity vs cost (mean, min–max over seeds)")
    ax2.set(xlabel="forward tokens spent (M)", ylabel="held-out ppl of the best so far",
            title="held-out perplexity at equal cost")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/embedded-8x.yaml"))
    ap.add_argument("--strategies", default="evolution,steady,tpe,cmaes,random")
    ap.add_argument("--seeds", default="0,1,2")
    add_runs_dir(ap, "runs/bench_strategies")
    add_out(ap, "runs/bench_strategies/bench_strategies")
    add_threads(ap)
    ap.add_argument("--budget-fractions", default="1",
                    help="run with these fractions of the full budget (0 < f ≤ 1); one below 1 "
                         "makes jobs of their own, NAME-STRATEGY-bF-sSEED")
    ap.add_argument("--report-only", action="store_true",
                    help="report the runs that finished; run nothing")
    ap.add_argument("--notes", type=Path, default=None,
                    help="a markdown file whose text goes into the report, above the tables")
    ap.add_argument("--partial", action="store_true",
                    help="with --report-only: also runs still going, up to the cost they reached")
    args = ap.parse_args()
    fractions = [float(f) for f in args.budget_fractions.split(",")]
    if not all(0 < f <= 1 for f in fractions):
        ap.error(f"--budget-fractions is {args.budget_fractions}: give numbers in (0, 1]")
    set_threads(args.threads)
    command = command_line()
    strategies = args.strategies.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    labelled = {st + ("" if f == 1 else f" ({f:g} budget)"):
                [job(args.config, st, sd, args.runs_dir, f) for sd in seeds]
                for st in strategies for f in fractions}
    specs = [spec for group in labelled.values() for spec in group]
    label = {spec.name: lab for lab, group in labelled.items() for spec in group}
    full = full_budget(specs[0])
    loaded = job_model(specs[0])
    cache_path = args.runs_dir / f"{args.config.stem}.heldout.json"  # ppl by candidate
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    runs = []
    for spec in specs:
        seconds = 0.0 if args.report_only else run(spec, loaded)
        folder = JobDir(spec.job_dir)
        finished = folder.best.is_file()
        if not (finished or (args.partial and folder.tables())):
            print(f"{spec.name}: not finished, left out", file=sys.stderr)
            continue
        tables = pd.read_parquet(folder.generations)
        points = best_so_far(tables, full, finished, limit=spec.budget.tokens)
        points["heldout_ppl"] = heldout(spec, loaded, points, cache)
        write_json(cache_path, cache)
        new = tables[tables.operator != "parent"]
        runs.append({"strategy": label[spec.name], "seed": spec.seed, "seconds": seconds,
                     "finished": finished, "cost_spent_tokens": int(tables.cost_spent_tokens.max()),
                     "evaluations": len(new), "pruned": int((new.status == "pruned").sum()),
                     "curve": curve(tables),
                     "checkpoints": points.drop(columns=["lambdas"]).to_dict("records")})
    if not runs:
        sys.exit("no finished run to report")
    base = baselines(specs[0], loaded)
    summary = summarize(runs)
    write_report(args.out, markdown(command, runs, summary, base, specs[0], full,
                                    args.notes.read_text() if args.notes else ""),
                 {"baselines": base, "runs": runs}, command)
    plot(runs, base, args.out.with_suffix(".png"))
    print(summary.to_string())


if __name__ == "__main__":
    main()
