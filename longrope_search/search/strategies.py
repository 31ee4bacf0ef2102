"""Other strategies on the same space and budget, through Optuna's samplers (TPE, CMA-ES,
random), so users can compare them with the evolution search at equal evaluation counts.

Monotonicity by reparametrisation: the sampler proposes λ of the first searched pair and
non-negative increments for the rest; the running sum is put on the grid and repaired into the
bounds. The job's ledger is the study itself; seeds are enqueued as the first trials.
Early stopping is not applied here (the samplers see complete scores only). A resumed job loses
no finished evaluation, but a sampler's random stream restarts, so unlike the evolution search
its continuation is not bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import time

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from longrope_search.model import LoadedModel, load_model
from longrope_search.search.evaluator import LocalEvaluator
from longrope_search.search.evolution import OK, PRUNED, Evaluation, Individual, ranked
from longrope_search.search.job import JobSpec
from longrope_search.search.ledger import open_study
from longrope_search.search.space import Genome, SearchSpace
from longrope_search.search.tables import write_generation

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def sampler_for(strategy: str, seed: int) -> optuna.samplers.BaseSampler:
    if strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if strategy == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    lo, hi = space.bounds()
    width = float((hi[0] - lo[0]) * space.step)
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "start": FloatDistribution(float(lo[0] * space.step), float(hi[0] * space.step))}
    for i in range(1, space.num_searched):
        dists[f"inc_{i}"] = FloatDistribution(0.0, width)
    dists["n_hat"] = CategoricalDistribution(list(space.n_hat_choices))
    return dists


def genome_of(params: dict, space: SearchSpace) -> Genome:
    incs = [params["start"]] + [params[f"inc_{i}"] for i in range(1, space.num_searched)]
    grid = np.round(np.cumsum(incs) / space.step).astype(np.int64)
    return space.complete(space.repair(grid), params["n_hat"])


def params_of(genome: Genome, space: SearchSpace) -> dict:
    lam = space.lambdas(genome)[space.searched]
    params = {"start": float(lam[0]), "n_hat": genome.n_hat}
    params.update({f"inc_{i}": float(lam[i] - lam[i - 1]) for i in range(1, lam.size)})
    return params


def evaluate_one(evaluator: LocalEvaluator, ind: Individual, cand) -> Evaluation:
    out: list[Evaluation] = []
    evaluator.evaluate([(ind, cand)], None, lambda _i, e: out.append(e))
    return out[0]


def run_optuna_search(spec: JobSpec, *, loaded: LoadedModel | None = None,
                      progress: bool = True):
    from tqdm.auto import tqdm

    from longrope_search.io import write_json
    from longrope_search.search.runner import (
        SearchResult,
        best_record,
        check_or_write_spec,
        plan_job,
        scorer_for,
    )

    t0 = time.time()
    plan = plan_job(spec)
    space = plan.space
    check_or_write_spec(spec)
    loaded = loaded or load_model(spec.model_path, dtype=spec.scoring.dtype,
                                  device=spec.scoring.device,
                                  trust_remote_code=spec.trust_remote_code)
    evaluator = LocalEvaluator(scorer_for(spec, plan, loaded))
    study = open_study(spec.job_dir / "ledger.journal", spec.name)
    study.sampler = sampler_for(spec.strategy, spec.seed)
    dists = distributions(space)
    budget = spec.evolution.budget
    per_table = spec.evolution.population
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    if not study.get_trials(deepcopy=False):
        for _, genome in plan.seeds:
            study.enqueue_trial(params_of(genome, space))
    evals: dict[str, Evaluation] = {}
    individuals: list[Individual] = []
    for t in finished:
        a = t.user_attrs
        evals[a["key"]] = Evaluation(a["key"], tuple(a["nll"]), a["status"],
                                     a["num_documents"])
        individuals.append(Individual(genome_of(t.params, space), a["generation"],
                                      spec.strategy))
    bar = tqdm(total=budget, initial=len(finished), desc=spec.name, unit="cand",
               disable=not progress)
    stats = {"evaluations": 0, "documents": 0}
    while len(individuals) < budget:
        trial = study.ask(dists)
        genome = genome_of(trial.params, space)
        ind = Individual(genome, len(individuals) // per_table, spec.strategy)
        if genome.key in evals:  # a repeat of a scored genome: tell its score, score nothing
            ev = evals[genome.key]
        else:
            ev = evaluate_one(evaluator, ind, space.candidate(genome, plan.attention_factor))
            stats["evaluations"] += 1
            stats["documents"] += len(ev.nll)
        evals[genome.key] = ev
        for k, v in {"key": genome.key, "generation": ind.generation,
                     "operator": spec.strategy, "parents": [], "nll": list(ev.nll),
                     "num_documents": ev.num_documents, "status": ev.status,
                     "attention_factor": plan.attention_factor, **ev.extra}.items():
            trial.set_user_attr(k, v)
        if ev.status == OK:
            study.tell(trial, ev.mean_nll)
        else:
            study.tell(trial, state=TrialState.PRUNED if ev.status == PRUNED
                       else TrialState.FAIL)
        individuals.append(ind)
        bar.update()
        if len(individuals) % per_table == 0 or len(individuals) == budget:
            gen = (len(individuals) - 1) // per_table
            write_generation(spec.job_dir / "generations", spec.name, gen,
                             [i for i in individuals if i.generation == gen], evals, space,
                             plan.attention_factor)
    bar.close()
    best_ind = ranked(individuals, evals)[0]
    best = space.candidate(best_ind.genome, plan.attention_factor, name="best")
    write_json(spec.job_dir / "best.json", best_record(plan, best, evals[best_ind.key]))
    return SearchResult(best, evals[best_ind.key], spec.job_dir, stats["evaluations"], 0,
                        len(finished), stats["documents"], time.time() - t0)
