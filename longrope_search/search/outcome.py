"""What a finished job reports: its best as a record (``best.json``), and the held-out
comparison by prompt length against the unmodified model and PI, NTK and YaRN, every method
as it is deployed (``comparison.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longrope_search.deploy import ENGINES, Engine, FactorSets, deployed
from longrope_search.evaluation.needles import depths
from longrope_search.model import LoadedModel
from longrope_search.model.source import ModelSource
from longrope_search.rope import Candidate, seed_candidate
from longrope_search.search.fitness import documents_of, target_scorer, truncated_scorer
from longrope_search.search.job import JobSpec
from longrope_search.search.plan import Plan
from longrope_search.search.trial import Evaluation, seed_operator

BASELINES = ("pi", "ntk", "yarn")  # what the held-out comparison measures the best against
UNMODIFIED = "unmodified"  # the comparison's row of the model as it was trained
NO_N_HAT = "best, n̂ = 0 (exported)"  # deploy: python's row of what the other engines get


def compare_on_documents(plan: Plan, loaded: LoadedModel, best: Candidate,
                         documents: Path) -> list[dict[str, Any]]:
    """The best candidate against the baselines on other documents, typically held-out ones
    never used as fitness, at every length of ``plan.comparison_lengths``.

    Each row has ``ppl`` at L' in the job's scoring mode (needle retrieval too) and
    ``ppl_by_length``: each document's first n tokens, one forward, every method as it is
    deployed (:func:`methods_at`): the searched factors as the job's engine applies them,
    the unmodified model, and PI, NTK and YaRN at the job's fixed ratio.
    """
    docs = documents_of(plan.spec, plan, loaded.tokenizer, documents)
    by_length = {n: truncated_scorer(plan, loaded, docs, n).score(methods_at(plan, best, n))
                 for n in plan.comparison_lengths}
    at_target = methods_at(plan, best, plan.target_length)
    sc = plan.spec.scoring
    if plan.target_length in by_length and sc.mode == "truncate":
        results = by_length[plan.target_length]
    else:  # the job's own mode at L' (sliding windows, needles)
        scorer = target_scorer(plan, loaded, docs)
        results = scorer.score(at_target)
    rows = [{"method": r.candidate.name, "ppl": r.ppl, "mean_nll": r.mean_nll,
             "ppl_by_length": {str(n): res[i].ppl for n, res in by_length.items()}}
            for i, r in enumerate(results)]
    if sc.mode == "needle":  # retrieval accuracy by depth beside the loss
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
    from longrope_search.model.identity import model_fingerprint, versions

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
