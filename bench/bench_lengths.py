"""Single-length fitness against ``scoring.lengths`` at equal cost: held-out perplexity by length.

Each fitness runs the config's job (default ``configs/embedded-8x.yaml``, the README's main job
and its budget in forward tokens) for each seed; a multi-length candidate costs the tokens of
every length, so at the same budget it gets fewer evaluations. Every run is an ordinary
resumable job in ``--runs-dir``; the held-out comparison by length (``comparison.json``: the
searched factors as the job's engine applies them, the unmodified model, YaRN at the job's
ratio) is read from each finished job. Writes ``<out>.md`` and ``<out>.json``.

    python bench/bench_lengths.py --seeds 0,1,2     # → runs/bench_lengths/bench_lengths.md
    python bench/bench_lengths.py --config configs/qwen2-c-8x.yaml \\
        --search-from configs/embedded-8x.yaml ...   # the main job's search on another model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import add_out, add_runs_dir, command_line, parser, write_report

from longrope_search.search.job import JobSpec, job_from_dict
from longrope_search.search.jobdir import JobDir
from longrope_search.search.run import run_search

#: fitness name → (lengths as multiples of L, weights); None: the config's own (L' alone)
FITNESSES: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "single (L')": None,
    "equal at L, 2L, 4L, 8L": ((1, 2, 4, 8), (1, 1, 1, 1)),
    "L and 8L, 1:3": ((1, 8), (1, 3)),
}


#: what ``--search-from`` takes from its config: the search and its budget, not the model
SEARCH_FIELDS = ("strategy", "strategy_options", "evolution", "early_stopping", "budget",
                 "attention_factor")


def job(config: Path, fitness: str, seed: int, runs_dir: Path,
        search_from: Path | None = None) -> JobSpec:
    data = yaml.safe_load(config.read_text())
    if search_from is not None:
        search = yaml.safe_load(search_from.read_text())
        data = {**{k: v for k, v in data.items() if k not in SEARCH_FIELDS},
                **{k: search[k] for k in SEARCH_FIELDS if k in search}}
    base = job_from_dict(data)
    slug = {name: f"f{i}" for i, name in enumerate(FITNESSES)}[fitness]
    scoring = dict(data.get("scoring") or {})
    if FITNESSES[fitness] is not None:
        multiples, weights = FITNESSES[fitness]
        L = _original_length(base)
        scoring.update(lengths=[int(m * L) for m in multiples], weights=list(weights))
    return job_from_dict({**data, "name": f"{base.name}-{slug}-s{seed}", "seed": seed,
                          "scoring": scoring, "results_dir": str(runs_dir)})


def _original_length(spec: JobSpec) -> int:
    from longrope_search.search.plan import plan_job

    return plan_job(spec).original_length


def comparison(spec: JobSpec) -> dict[str, Any]:
    files = JobDir.of(spec)
    if files.read_best() is None:
        run_search(spec, progress=False)
    return files.read_comparison()


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, min and max over seeds of each fitness's held-out ppl at each length."""
    out = []
    for fitness in FITNESSES:
        mine = [r for r in runs if r["fitness"] == fitness]
        if not mine:
            continue
        lengths = list(mine[0]["best"])
        out.append({"fitness": fitness, "seeds": len(mine), **{
            n: (float(np.mean(v)), float(min(v)), float(max(v)))
            for n in lengths for v in [[r["best"][n] for r in mine]]}})
    return out


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = summarize(runs)
    lengths = [k for k in rows[0] if k not in ("fitness", "seeds")]
    base = runs[0]["baselines"]
    head = "| fitness | seeds | " + " | ".join(lengths) + " |"
    lines = [
        "# Single-length fitness against a multi-length one, at equal cost", "",
        f"Command: `{args.command_line}`", "",
        f"Config `{args.config}`"
        + (f", search and budget from `{args.search_from}`" if args.search_from else "")
        + " (budget in forward tokens as the config gives it: a multi-length "
        "candidate costs the tokens of every length, so it gets fewer evaluations). Held-out "
        "perplexity of the best factors as the job's engine applies them, at each prompt "
        "length, mean (min–max) over seeds; the baselines are deployed configs (the same at "
        "every length).", "", head, "|---|---|" + "---|" * len(lengths)]
    for r in rows:
        cells = " | ".join(f"{r[n][0]:.2f} ({r[n][1]:.2f}–{r[n][2]:.2f})" for n in lengths)
        lines.append(f"| {r['fitness']} | {r['seeds']} | {cells} |")
    for name, by in base.items():
        lines.append(f"| {name} | — | " + " | ".join(f"{by[n]:.2f}" for n in lengths) + " |")
    lines += ["", "Evaluations per run: " + ", ".join(
        f"{r['fitness']} s{r['seed']}: {r['evaluations']}" for r in runs) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/embedded-8x.yaml"))
    ap.add_argument("--search-from", type=Path, default=None,
                    help="take the strategy, its options, the budget and early stopping from "
                         "this config (e.g. the main job's, on another model's --config)")
    ap.add_argument("--seeds", default="0,1,2")
    add_runs_dir(ap, "runs/bench_lengths")
    add_out(ap, "runs/bench_lengths/bench_lengths")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy each finished run here, without its ledger (for results/)")
    args = ap.parse_args()
    args.command_line = command_line()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):  # seed by seed: whole sets first
        for fitness in FITNESSES:
            spec = job(args.config, fitness, seed, args.runs_dir, args.search_from)
            comp = comparison(spec)
            if args.keep:
                keep(JobDir.of(spec).path, args.keep / spec.name)
            rows = {r["method"]: r["ppl_by_length"] for r in comp["rows"]}
            best = JobDir.of(spec).read_best()
            runs.append({"fitness": fitness, "seed": seed, "job": spec.name,
                         "lengths": list(spec.scoring.lengths), "best": rows["best"],
                         "evaluations": _evaluations(spec),
                         "baselines": {k: rows[k] for k in ("unmodified", "yarn")},
                         "search_ppl": best["search_ppl"]})
            print(f"{fitness} seed {seed}: " + json.dumps(rows["best"]), flush=True)
            write(runs, args)  # after every run: a bench cut short still reports what it has
    print(write(runs, args))
    return 0


def write(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    text = report(runs, args)
    write_report(args.out, text, {"runs": runs}, args.command_line)
    return text


def keep(job_dir: Path, to: Path) -> None:
    """A finished run's record (spec, tables, best, comparison), its ledger left out."""
    import shutil

    shutil.copytree(job_dir, to, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("ledger.journal*", "state.json", "lock"))


def _evaluations(spec: JobSpec) -> int:
    import pandas as pd

    tables = pd.read_parquet(JobDir.of(spec).generations)
    return int((tables.operator != "parent").sum())


if __name__ == "__main__":
    raise SystemExit(main())
