"""Would gradient steps on other text, or on less of it, do better? A descent's search and
held-out perplexity when each step's gradient comes from the search documents (as `gradient`
and `memetic` do), from 8 random windows of the search files that the fitness never reads, or
from half of the search documents at a time (twice the steps for the same cost).

Both arms start at YaRN (n̂ = 0, the job's attention factor) and take the strategies' projected
Adam on x = log λ (lr 0.05, isotonic projection, clipped to the space's bounds):

* ``fixed``: every step's gradient on the job's search documents (its first L' tokens of each);
* ``pool``:  every step's gradient on 8 windows of L' tokens drawn at random from the search
  files past their first L' tokens (a fresh draw each step);
* ``half``:  the search documents' even and odd halves in turn (a minibatch of the fitness
  itself: each step costs half of a ``fixed`` step, so it takes twice the steps).

Costs are in ``fixed`` steps (one forward and one backward of every search document). Every
``--report`` of them each arm's current λ is scored on the search and held-out documents.

    python bench/bench_gradient_documents.py --steps 60 --report 5 --threads 2
                                        # → runs/bench_gradient_documents/
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import (
    add_out,
    add_threads,
    command_line,
    heldout_scorer,
    job_model,
    parser,
    set_threads,
    write_report,
)

from longrope_search.evaluation.documents import iter_raw_documents
from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.model import LoadedModel
from longrope_search.rope import Candidate, seed_candidate
from longrope_search.search.fitness import scorer_for
from longrope_search.search.job import load_job
from longrope_search.search.plan import Plan, plan_job
from longrope_search.search.strategies.gradient import Start, isotonic

LR, BATCH = 0.05, 8
ARMS = {"fixed": 1.0, "pool": 1.0, "half": 0.5}  # arm → a step's cost, in fixed steps


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
        loaded = job_model(plan.spec)
        return cls(plan, loaded, scorer_for(plan, loaded), heldout_scorer(plan, loaded),
                   windows(plan, loaded))


def step_scorer(arm: str, setting: Setting, t: int, rng: np.random.Generator
                ) -> PerplexityScorer:
    """The documents step ``t`` of ``arm`` takes its gradient on."""
    plan, search = setting.plan, setting.search
    if arm == "fixed":
        return search
    if arm == "pool":
        docs = [setting.pool[i] for i in rng.choice(len(setting.pool), BATCH, replace=False)]
    else:
        docs = list(search.documents[t % 2::2])
    return PerplexityScorer(setting.loaded.model, plan.geometry, docs, length=plan.target_length)


def descend(arm: str, setting: Setting, cost: int, report: int) -> list[dict]:
    """Steps of one arm for ``cost`` fixed steps; its search and held-out ppl every ``report``
    of them."""
    plan, search, heldout = setting.plan, setting.search, setting.heldout
    rng = np.random.default_rng(0)
    yarn = seed_candidate("yarn", plan.geometry, plan.extension_ratio)
    start = Start(arm, np.log(np.asarray(yarn.lambdas, dtype=np.float64)), 0)
    low, high = np.log(plan.space.lambda_min), np.log(plan.space.lambda_max)
    rows, t0, per_report = [], time.time(), round(report / ARMS[arm])
    for t in range(1, round(cost / ARMS[arm]) + 1):
        scorer = step_scorer(arm, setting, t, rng)
        here = Candidate(np.exp(start.x), 0, yarn.attention_factor, arm)
        grad = gradient(scorer, here).lambdas * np.exp(start.x)  # ∂L/∂x = λ ∘ ∂L/∂λ
        start.x = np.clip(isotonic(start.x - start.adam(grad, LR)), low, high)
        if t % per_report == 0:
            now = Candidate(np.exp(start.x), 0, yarn.attention_factor, arm)
            rows.append({"arm": arm, "step": t, "cost": t * ARMS[arm],
                         "search_ppl": search.score([now])[0].ppl,
                         "heldout_ppl": heldout.score([now])[0].ppl,
                         "seconds": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = parser(__doc__, first_paragraph=True)
    ap.add_argument("--config", type=Path, default=Path("configs/embedded-8x.yaml"))
    ap.add_argument("--steps", type=int, default=60, help="each arm's cost, in fixed steps")
    ap.add_argument("--report", type=int, default=15,
                    help="score every arm every N fixed steps' cost")
    add_threads(ap)
    add_out(ap, "runs/bench_gradient_documents/bench_gradient_documents")
    args = ap.parse_args()
    set_threads(args.threads)
    setting = Setting.of(plan_job(load_job(args.config)))
    rows = [r for arm in ARMS for r in descend(arm, setting, args.steps, args.report)]
    command = command_line()
    lines = ["# Gradient steps on the search documents, on other windows, or on half of them", "",
             f"Command: `{command}`", "",
             "| arm | cost (fixed steps) | steps | search ppl | held-out ppl |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['cost']:g} | {r['step']} | {r['search_ppl']:.3f} "
              f"| {r['heldout_ppl']:.3f} |" for r in rows]
    write_report(args.out, "\n".join(lines) + "\n", {"rows": rows}, command)


if __name__ == "__main__":
    main()
