"""Replay pruning rules offline on a job run without early stopping.

Every candidate of such a run has all its per-document NLLs, so any rule can be replayed on the
same trajectory: how many document evaluations it would save, and how many candidates it would
prune wrongly (ones whose final mean NLL is within the top-k threshold, which could change the
search's trajectory).

    python bench/early_stopping_rules.py results/embedded-8x-no-early-stopping --top-k 32
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from longrope_search.io import atomic_write

# rule(partial, history, top_k_rows, threshold) -> prune?
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, float], bool]


def replay(nll: np.ndarray, gen: np.ndarray, k: int, rule: Rule) -> tuple[float, int]:
    n = nll.shape[1]
    saved = total = wrong = 0
    for g in range(1, gen.max() + 1):
        prev, cur = nll[gen < g], nll[gen == g]
        order = np.argsort(prev.mean(1))
        threshold, top = prev.mean(1)[order[k - 1]], prev[order[:k]]
        for c in cur:
            total += n
            for j in range(1, n):
                if rule(c[:j], prev, top, threshold):
                    saved += n - j
                    wrong += c.mean() <= threshold
                    break
    return saved / total, wrong


def floors(source: str, margin: float) -> Rule:
    def rule(p, prev, top, t):
        f = (prev if source == "all" else top).min(0)
        return (p.sum() + (f[p.size:] - margin).sum()) / f.size > t
    return rule


def paired(margin: float) -> Rule:
    """Remaining documents at least the best candidate's, shifted by this candidate's best
    offset so far, less the margin."""
    def rule(p, prev, top, t):
        ref = top[0]
        return (p.sum() + (ref[p.size:] + (p - ref[: p.size]).min() - margin).sum()) / ref.size > t
    return rule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job_dir", type=Path)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("results/early_stopping_rules.md"))
    args = ap.parse_args()
    t = pd.read_parquet(args.job_dir / "generations")
    t = t[t.operator != "parent"]
    nll = np.stack(t.nll.to_numpy())
    gen = t.generation.astype(int).to_numpy()
    k, n = args.top_k, nll.shape[1]
    oracle = sum((nll[gen == g].mean(1) > np.sort(nll[gen < g].mean(1))[k - 1]).sum()
                 for g in range(1, gen.max() + 1)) * (n - 1) / (nll[gen > 0].size)
    rules = [(f"floors over all history (the shipped rule), margin {m}", floors("all", m))
             for m in (0.0, 0.02)]
    rules += [(f"floors over the top-k, margin {m}", floors("top", m)) for m in (0.0, 0.02)]
    rules += [(f"paired with the best, margin {m}", paired(m)) for m in (0.0, 0.01, 0.02, 0.05)]
    lines = ["# Early stopping: pruning rules replayed", "",
             f"Command: `python bench/early_stopping_rules.py {' '.join(sys.argv[1:])}`", "",
             f"Run: `{args.job_dir}` ({len(t)} candidates, {n} documents each, top-k {k}), "
             "generations 1 onward.", "",
             "| rule | document evaluations saved | candidates pruned wrongly |", "|---|---|---|",
             f"| oracle: every candidate worse than the threshold, after 1 document | "
             f"{100 * oracle:.1f}% | 0 |"]
    for name, rule in rules:
        saved, wrong = replay(nll, gen, k, rule)
        lines.append(f"| {name} | {100 * saved:.1f}% | {wrong} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write(args.out, lambda p: p.write_text(text))


if __name__ == "__main__":
    main()
