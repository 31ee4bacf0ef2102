"""Would gradient steps on more text generalise better? A descent's held-out perplexity when
each step's gradient comes from the search documents (as `gradient` and `memetic` do) or from
8 random windows of the search files that the fitness never reads.

Both arms start at YaRN (n̂ = 0, the job's attention factor) and take the strategies' projected
Adam on x = log λ (lr 0.05, isotonic projection, clipped to the space's bounds):

* ``fixed``: every step's gradient on the job's search documents (its first L' tokens of each);
* ``pool``:  every step's gradient on 8 windows of L' tokens drawn at random from the search
  files past their first L' tokens (a fresh draw each step).

Every ``--report`` steps both arms' current λ are scored on the search and held-out documents.

    python bench/bench_gradient_documents.py --steps 60 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longrope_search.evaluation.documents import iter_raw_documents
from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.io import atomic_write, write_json
from longrope_search.model import LoadedModel, load_model
from longrope_search.rope import Candidate, seed_candidate
from longrope_search.search.job import load_job
from longrope_search.search.plan import Plan, comparison_documents, plan_job, scorer_for
from longrope_search.search.strategies.gradient import Start, isotonic

LR, BATCH = 0.05, 8


def windows(plan: Plan, loaded: LoadedModel) -> list[torch.Tensor]:
    """Every whole window of L' tokens past the first L' of each search file."""
    length, out = plan.target_length, []
    for text in iter_raw_documents(plan.spec.documents_path):
        ids = loaded.tokenizer(text)["input_ids"]
        out += [torch.tensor(ids[o:o + length]) for o in range(length, len(ids) - length + 1,
                                                                length)]
    return out


@dataclass
class Setting:
    """What both arms share, built once: the model, its two scorers, the window pool."""

    plan: Plan
    loaded: LoadedModel
    search: PerplexityScorer
    heldout: PerplexityScorer
    pool: list[torch.Tensor]

    @classmethod
    def of(cls, plan: Plan) -> Setting:
        spec = plan.spec
        loaded = load_model(spec.model_path, dtype=spec.scoring.dtype,
                            device=spec.scoring.device)
        return cls(plan, loaded, scorer_for(plan, loaded),
                   scorer_for(plan, loaded, comparison_documents(spec)), windows(plan, loaded))


def descend(arm: str, setting: Setting, steps: int, report: int) -> list[dict]:
    """``steps`` steps of one arm; its search and held-out ppl every ``report`` steps."""
    plan, loaded, search, heldout = setting.plan, setting.loaded, setting.search, setting.heldout
    pool, rng = setting.pool, np.random.default_rng(0)
    yarn = seed_candidate("yarn", plan.geometry, plan.extension_ratio)
    start = Start(arm, np.log(np.asarray(yarn.lambdas, dtype=np.float64)), 0)
    low, high = np.log(plan.space.lambda_min), np.log(plan.space.lambda_max)
    rows, t0 = [], time.time()
    for t in range(1, steps + 1):
        scorer = search
        if arm == "pool":
            batch = [pool[i] for i in rng.choice(len(pool), BATCH, replace=False)]
            scorer = PerplexityScorer(loaded.model, plan.geometry, batch,
                                      length=plan.target_length)
        here = Candidate(np.exp(start.x), 0, yarn.attention_factor, arm)
        grad = gradient(scorer, here).lambdas * np.exp(start.x)  # ∂L/∂x = λ ∘ ∂L/∂λ
        start.x = np.clip(isotonic(start.x - start.adam(grad, LR)), low, high)
        if t % report == 0:
            now = Candidate(np.exp(start.x), 0, yarn.attention_factor, arm)
            rows.append({"arm": arm, "step": t, "search_ppl": search.score([now])[0].ppl,
                         "heldout_ppl": heldout.score([now])[0].ppl,
                         "seconds": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/embedded-8x.yaml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--report", type=int, default=15, help="score both arms every N steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_gradient_documents"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = Setting.of(plan_job(load_job(args.config)))
    rows = [r for arm in ("fixed", "pool") for r in descend(arm, setting, args.steps,
                                                           args.report)]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    write_json(args.out.with_suffix(".json"), {"command": command, "rows": rows})
    lines = ["# Gradient steps on the search documents or on a pool of other windows", "",
             f"Command: `{command}`", "", "| arm | step | search ppl | held-out ppl |",
             "|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['step']} | {r['search_ppl']:.3f} | {r['heldout_ppl']:.3f} |"
              for r in rows]
    atomic_write(args.out.with_suffix(".md"), lambda p: p.write_text("\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
