"""What a finished job writes: its best as a record (``best.json``, with the best re-scored
with n̂ = 0 where it has n̂), and the held-out comparison by prompt length against the
unmodified model and PI, NTK and YaRN, every method as it is deployed (``comparison.json``);
for a chain, the last long stage's, with its stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from longrope_search.deploy import ENGINES, Engine, FactorSets, deployed
from longrope_search.evaluation.modes import NEEDLE, TRUNCATE
from longrope_search.evaluation.needles import depths
from longrope_search.io import write_json
from longrope_search.model import LoadedModel
from longrope_search.model.identity import model_fingerprint, versions
from longrope_search.model.source import ModelSource
from longrope_search.rope import Candidate, seed_candidate
from longrope_search.search.fitness import target_scorer, truncated_scorer
from longrope_search.search.job import JobSpec
from longrope_search.search.jobdir import JobDir
from longrope_search.search.plan import Plan
from longrope_search.search.space import Genome
from longrope_search.search.trial import (
    OK,
    Evaluation,
    Individual,
    Operator,
    candidate,
    ranked,
    seed_operator,
)

if TYPE_CHECKING:  # the evaluator's compare() calls into this module
    from longrope_search.search.evaluator import Evaluator

BASELINES = ("pi", "ntk", "yarn")  # what the held-out comparison measures the best against
UNMODIFIED = "unmodified"  # the comparison's row of the model as it was trained
NO_N_HAT = "best, n̂ = 0 (exported)"  # deploy: python's row of what the other engines get
N_HAT_ONLY_PYTHON = ("n̂ is applied by longrope_search.apply_factors only (deploy: python); "
                     "no inference engine implements it, and the exports rescale every position")


def compare_on_documents(plan: Plan, loaded: LoadedModel, best: Candidate
                         ) -> list[dict[str, Any]]:
    """The best candidate against the baselines on the plan's held-out documents (never used
    as fitness; the search documents when the job names none), at every length of
    ``plan.comparison_lengths``.

    Each row has ``ppl`` at L' in the job's scoring mode (needle retrieval too) and
    ``ppl_by_length``: each document's first n tokens, one forward, every method as it is
    deployed (:func:`methods_at`): the searched factors as the job's engine applies them,
    the unmodified model, and PI, NTK and YaRN at the job's fixed ratio.
    """
    docs = plan.heldout
    by_length = {n: truncated_scorer(plan, loaded, docs, n).score(methods_at(plan, best, n))
                 for n in plan.comparison_lengths}
    at_target = methods_at(plan, best, plan.target_length)
    sc = plan.spec.scoring
    if plan.target_length in by_length and sc.mode == TRUNCATE:
        results = by_length[plan.target_length]
    else:  # the job's own mode at L' (sliding windows, needles)
        scorer = target_scorer(plan, loaded, docs)
        results = scorer.score(at_target)
    rows = [{"method": r.candidate.name, "ppl": r.ppl, "mean_nll": r.mean_nll,
             "ppl_by_length": {str(n): res[i].ppl for n, res in by_length.items()}}
            for i, r in enumerate(results)]
    if sc.mode == NEEDLE:  # retrieval accuracy by depth beside the loss
        for row, cand in zip(rows, at_target, strict=True):
            row["depths"] = list(depths(sc.needles))
            row["accuracy_by_depth"] = scorer.retrieved(cand).mean(axis=0).tolist()
    best_ppl = rows[0]["ppl"]
    for r in rows:
        r["gain_vs_this_pct"] = 100 * (r["ppl"] - best_ppl) / r["ppl"]
    return rows


def comparison_semantics(spec: JobSpec) -> str:
    """Which semantics the comparison's rows use: the job's engine for the searched factors,
    deployed configs at the job's ratio for the seeds."""
    if spec.factors == "short":
        return "short factors at the recovery's length, under the long job's attention factor"
    return (f"perplexity by prompt length; best as deploy: {spec.deploy} applies it "
            f"({ENGINES[Engine(spec.deploy)].how}); the unmodified model; PI, NTK and YaRN "
            "configured for the job's ratio, the same at every length")


def methods_at(plan: Plan, best: Candidate, length: int) -> list[Candidate]:
    """What the comparison scores at ``length``, the searched factors first: as the job's
    engine deploys them (n̂ only for ``python``, which also gets a row without it), then the
    baselines. For short factors: the baselines of :func:`baselines`."""
    if plan.spec.factors == "short":
        return [best, *baselines(plan)]
    ones = np.ones(plan.geometry.num_pairs)
    sets = FactorSets(best, ones if plan.two_sets else None)
    out = [deployed(plan.spec.deploy, sets, length, plan.original_length, best.name)]
    if out[0].n_hat:
        out.append(Candidate(best.lambdas, 0, best.attention_factor, NO_N_HAT))
    return [*out, Candidate(ones, 0, 1.0, UNMODIFIED), *baselines(plan)]


def baselines(plan: Plan) -> list[Candidate]:
    """What the held-out comparison measures the best against: PI, NTK and YaRN at the job's
    ratio, each with its own attention factor, at every length (a deployed config); or for
    short factors: the unmodified model, ones under the job's attention factor (what an engine
    without short factors applies) and each seed (the long factors) under it."""
    if plan.spec.factors == "long":
        return [seed_candidate(n, plan.geometry, plan.extension_ratio) for n in BASELINES]
    ones = np.ones(plan.geometry.num_pairs)
    m = plan.attention_factor
    return [Candidate(ones, 0, 1.0, UNMODIFIED), Candidate(ones, 0, m, "ones"),
            *(Candidate(plan.space.lambdas(g), 0, m, seed_operator(name)) for name, g in plan.seeds
              if np.any(plan.space.lambdas(g) != 1.0))]


def best_record(plan: Plan, best: Candidate, ev: Evaluation) -> dict[str, Any]:
    """The searched factors in longrope-search's own format (``longrope-search eval --factors``
    reads it)."""
    config = ModelSource.of(plan.spec.model_path).config(plan.spec.trust_remote_code)
    return {
        "lambdas": best.lambdas.tolist(), "n_hat": best.n_hat,
        "attention_factor": best.attention_factor,
        "original_length": plan.original_length, "target_length": plan.target_length,
        "extension_ratio": plan.extension_ratio, "factors": plan.spec.factors,
        "search_ppl": ev.ppl,
        "search_nll": list(ev.nll), "job": plan.spec.name, "strategy": plan.spec.strategy,
        "deploy": plan.spec.deploy, "model_type": plan.model_type,
        "model": str(plan.spec.model_path), "model_fingerprint": model_fingerprint(config),
        "rope_theta": plan.geometry.base, "versions": versions(),
    }


@dataclass
class Outcome:
    """What :func:`finish` wrote: the best candidate, its evaluation and the comparison."""

    best: Candidate
    evaluation: Evaluation
    comparison: list[dict[str, Any]]
    semantics: str  # what the comparison's rows mean (:func:`comparison_semantics`)


def finish(plan: Plan, evaluator: Evaluator, folder: JobDir, history: Sequence[Individual],
           evals: Mapping[str, Evaluation], ended: str | None) -> Outcome:
    """The end of a search: ``best.json`` (the lowest complete evaluation, on the grid or a
    gradient step's exact λ), the best λ re-scored with n̂ = 0 when n̂ > 0 (what every engine
    but ``python`` applies), and the held-out comparison (``comparison.json``)."""
    ind, ev = best_of(history, evals, folder)
    best = candidate(ind, plan.space, plan.attention_factor, "best")
    record = best_record(plan, best, ev)
    record["ended"] = ended
    record["seed_ppl"] = {name: evals[g.key].ppl for name, g in plan.seeds
                          if g.key in evals and evals[g.key].status == OK}
    if best.n_hat:  # what an inference engine (none supports n̂) will actually get
        record["n_hat_note"] = N_HAT_ONLY_PYTHON
        zero = Individual(Genome(ind.genome.grid, 0), -1, Operator.N_HAT_ZERO, lambdas=ind.lambdas)
        known = evals.get(zero.key)
        record["search_ppl_without_n_hat"] = (
            known if known and known.status == OK else _score_alone(plan, evaluator, zero)
        ).ppl
    rows = evaluator.compare(best)
    semantics = comparison_semantics(plan.spec)
    write_json(folder.comparison, {
        "documents": str(plan.spec.comparison_path), "deploy": plan.spec.deploy,
        "lengths": list(plan.comparison_lengths), "semantics": semantics, "rows": rows})
    write_json(folder.best, record)  # last: a job with best.json has finished
    folder.remove_temporary()
    return Outcome(best, ev, rows, semantics)


def best_of(history: Sequence[Individual], evals: Mapping[str, Evaluation], folder: JobDir
            ) -> tuple[Individual, Evaluation]:
    """The lowest complete evaluation: a grid candidate, or a gradient step at its exact λ
    (scored on every document like any candidate, so as much a result as one on the grid; the
    progress bar, the tables' best so far and the benchmarks rank it the same way)."""
    top = ranked(history, evals)
    if not top:
        raise RuntimeError("no candidate was scored completely: see the failed ones in "
                           f"{folder.generations}")
    return top[0], evals[top[0].key]


def _score_alone(plan: Plan, evaluator: Evaluator, ind: Individual) -> Evaluation:
    """Score one individual outside the search (not in the ledger, not told to the strategy)."""
    evaluator.submit(ind, candidate(ind, plan.space, plan.attention_factor), None)
    while True:
        for done, ev in evaluator.wait():
            if done is ind:
                return ev


def finish_chain(chain: JobDir, last_long: JobDir, stages: list[JobDir]) -> None:
    """The chain's best.json and comparison.json: the last long stage's, with the stages."""
    best = last_long.finished_best()
    records = [(s, s.finished_best()) for s in stages]
    best["stages"] = [{"stage": s.name, **{k: r.get(k) for k in (
        "factors", "extension_ratio", "target_length", "search_ppl")}} for s, r in records]
    short = [s for s, r in records if r.get("factors") == "short"]
    if short:
        best["recovery"] = str(short[-1].path.relative_to(chain.path))
    comparison = last_long.read_comparison()
    if comparison is not None:
        write_json(chain.comparison, comparison)
    write_json(chain.best, best)  # last: a chain with best.json has finished
