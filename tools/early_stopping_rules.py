"""Replay pruning rules offline on a job that ran without early stopping.

Every candidate of such a run has all its per-document NLLs. Any rule can therefore be replayed
on the same trajectory, using the package's own rule code, fixed at each generation's start from
the earlier generations. The replay counts the document evaluations a rule saves, and the
candidates it stops that belonged in the generation's new top-k. Only those change the search: a
rule that stops none of them leaves every generation's parents, and so the best candidate, as
they were.

    python tools/early_stopping_rules.py \\
        results/bench_early_stopping/embedded-8x-no-early-stopping \\
        results/bench_early_stopping/embedded-8x-no-early-stopping-bf16    # → runs/…_rules.md
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
from common import command_line, parser

from longrope_search.io import atomic_write
from longrope_search.search.early_stopping import PruneRule, floor_bound, sequential_test
from longrope_search.search.jobdir import JobDir

RuleMaker = Callable[[np.ndarray, int], PruneRule]


def generations(nll: np.ndarray, gen: np.ndarray, k: int):
    """(history, children, T, T*) per generation ≥ 1. T is the k-th best mean NLL when the
    generation starts; T* is the k-th best once its children are scored, which is what a
    child must beat to become a parent."""
    for g in range(1, gen.max() + 1):
        history, children = nll[gen < g], nll[gen == g]
        parents = np.sort(history.mean(1))[:k]
        after = np.sort(np.concatenate([parents, children.mean(1)]))[k - 1]
        yield g, history, children, parents[-1], after


def replay(nll: np.ndarray, gen: np.ndarray, k: int, make: RuleMaker
           ) -> tuple[float, int, int | None]:
    """(fraction of document evaluations saved, parents stopped, first generation changed)."""
    n = nll.shape[1]
    saved = total = wrong = 0
    first = None
    for g, history, children, _, after in generations(nll, gen, k):
        rule = make(history, k)
        for x in children:
            total += n
            stop = next((j for j in range(1, n) if rule.should_prune(x[:j].tolist())), None)
            if stop is not None:
                saved += n - stop
                if x.mean() <= after:
                    wrong += 1
                    first = first or g
    return saved / total, wrong, first


def report(job_dir: Path, k: int) -> list[str]:
    """One run's section: every rule replayed, and what any rule could save on it."""
    t = pd.read_parquet(JobDir(job_dir).generations)
    t = t[t.operator != "parent"]
    if (t.status != "ok").any():
        sys.exit(f"{job_dir} has pruned or failed candidates: replay needs a job run "
                 "with early_stopping.enabled false")
    nll = np.stack(t.nll.to_numpy())
    gen = t.generation.astype(int).to_numpy()
    n = nll.shape[1]

    losers = {"start": 0, "after": 0}
    gaps = []
    for _, _, children, start, after in generations(nll, gen, k):
        losers["start"] += int((children.mean(1) > start).sum())
        losers["after"] += int((children.mean(1) > after).sum())
        gaps += (children.mean(1) - after).tolist()
    oracle = {when: 100 * count * (n - 1) / (int((gen > 0).sum()) * n)
              for when, count in losers.items()}
    gaps_arr = np.array(gaps)
    within = " · ".join(f"≤ {d} nats: {100 * np.mean((gaps_arr > 0) & (gaps_arr <= d)):.0f}%"
                        for d in (0.002, 0.005, 0.01))

    rules: list[tuple[str, RuleMaker]] = [
        (f"bound, margin {m}", lambda h, k, m=m: floor_bound(h, k, m)) for m in (0.02, 0.0)]
    rules += [(f"sequential, z = {z}", lambda h, k, z=z: sequential_test(h, k, z))
              for z in (4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0)]
    rows = []
    for name, make in rules:
        saved, wrong, first = replay(nll, gen, k, make)
        rows.append(f"| {name} | {100 * saved:.1f}% | {wrong} | {first or '—'} |")
    return [
        f"## `{job_dir}`", "",
        f"{len(t)} candidates, {n} documents each, top-k {k}. Generations 1 onward; "
        "generation 0 has no earlier generation to set a rule.", "",
        "| rule | document evaluations saved | parents stopped | first generation changed |",
        "|---|---|---|---|",
        *rows, "",
        "What any rule can save here:", "",
        f"- Stopping every child that ends worse than T (the k-th best when its generation "
        f"starts) after one document: {oracle['start']:.1f}%.",
        f"- Stopping every child that ends outside the new top-k after one document (it must "
        f"beat T*, the k-th best once its generation is scored): {oracle['after']:.1f}%.",
        f"- But the children that end outside the new top-k miss it by little. As a share of all "
        f"children, those within a given distance of T* are: {within}.",
        "- The sequential test's estimate is off by the deviation below (median over "
        "generations, measured on each generation's top-k as the rule does). A child that "
        "misses by 0.002 nats cannot be told apart from a parent until most documents are in:",
        "",
        "| documents scored | deviation of the estimate (nats) |", "|---|---|",
        *[f"| {j} | {d:.4f} |" for j, d in enumerate(error_deviation(nll, gen, k), start=1)],
        "",
    ]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("job_dirs", type=Path, nargs="+", metavar="job_dir")
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("runs/early_stopping_rules.md"),
                    help="the report (default runs/early_stopping_rules.md)")
    args = ap.parse_args()
    lines = [
        "# Early stopping: pruning rules replayed", "",
        f"Command: `{command_line()}`", "",
        "Each rule is replayed with the package's own code on a run without early stopping. A "
        "parent stopped is a child that would have entered its generation's new top-k. Stopping "
        "one changes every later generation, and so, in practice, the best candidate.", "",
    ]
    for job_dir in args.job_dirs:
        lines += report(job_dir, args.top_k)
    text = "\n".join(lines)
    print(text)
    atomic_write(args.out, lambda p: p.write_text(text))


def error_deviation(nll: np.ndarray, gen: np.ndarray, k: int) -> list[float]:
    """Median over generations of the sequential test's σ_j. Its offsets are fitted on the same
    parents it measures the error on, so the error's mean a_j is 0 and, at z = 1, σ_j is
    −lower_j."""
    lower = np.array([sequential_test(history, k, z=1.0).lower
                      for _, history, *_ in generations(nll, gen, k)])
    return (-np.median(lower, axis=0)).tolist()


if __name__ == "__main__":
    main()
