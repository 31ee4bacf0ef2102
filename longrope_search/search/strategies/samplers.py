"""Optuna's samplers (TPE, CMA-ES, random) as strategies on the same space and budget.

Monotonicity by reparametrisation: the sampler proposes λ of the first searched pair and
non-negative increments for the rest; the running sum is put on the grid and repaired into the
bounds. Each strategy keeps its own in-memory study (the job's ledger is the driver's). The
seed candidates are enqueued as the first trials.

Candidates are asked in batches (P first, then N1 + N2, Algorithm 1's schedule) and the batch's
results are told to the study in ask order once all are in, so what the sampler proposes never
depends on which worker finished first: a Ray pool and an in-process run make the same tables.
Pruned candidates are told as pruned, failed ones as failed.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from longrope_search.search.space import Genome, SearchSpace
from longrope_search.search.strategies.base import SearchProblem, Strategy
from longrope_search.search.trial import OK, PRUNED, Evaluation, Individual, seed_operator

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    lo, hi = space.bounds()
    width = float((hi[0] - lo[0]) * space.step)
    dists: dict[str, BaseDistribution] = {
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


class SamplerStrategy(Strategy):
    """An Optuna sampler behind the strategy interface, in batches (see the module docstring).
    Subclasses name the sampler."""

    operator: ClassVar[str]

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__(problem)
        self.study = optuna.create_study(direction="minimize", sampler=self.sampler())
        self.dists = distributions(problem.space)
        self.seed_names = [seed_operator(name) for name, _ in problem.seed_candidates]
        for _, genome in problem.seed_candidates:  # asked first, in this order
            self.study.enqueue_trial(params_of(genome, problem.space))
        self.batch = 0
        self.asked: list[tuple[optuna.trial.Trial, Individual]] = []
        self.told: dict[int, Evaluation] = {}  # index in ``asked`` → its result

    def sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler this strategy asks (each subclass's own)."""
        raise NotImplementedError

    def batch_size(self, batch: int) -> int:
        """How many candidates batch ``batch`` asks for: the population first, then ``children``."""
        cfg = self.problem.search
        return cfg.population if batch == 0 else max(1, cfg.children)

    def ask(self) -> Individual | None:
        if len(self.asked) >= self.batch_size(self.batch):
            return None
        trial = self.study.ask(self.dists)
        operator = self.seed_names.pop(0) if self.seed_names else self.operator
        ind = Individual(genome_of(trial.params, self.problem.space), self.batch, operator)
        self.asked.append((trial, ind))
        return ind

    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        index = next(i for i, (_, ind) in enumerate(self.asked)
                     if ind is individual and i not in self.told)
        self.told[index] = evaluation
        if len(self.told) == self.batch_size(self.batch):
            for i, (trial, _) in enumerate(self.asked):
                ev = self.told[i]
                if ev.status == OK:
                    self.study.tell(trial, ev.mean_nll)
                else:
                    self.study.tell(trial, state=TrialState.PRUNED if ev.status == PRUNED
                                    else TrialState.FAIL)
            self.batch += 1
            self.asked, self.told = [], {}


class TPE(SamplerStrategy):
    """Optuna's multivariate tree-structured Parzen estimator."""

    operator = "tpe"

    def sampler(self) -> optuna.samplers.BaseSampler:
        """Optuna's multivariate TPE."""
        return optuna.samplers.TPESampler(seed=self.problem.seed, multivariate=True)


class CmaEs(SamplerStrategy):
    """Optuna's CMA-ES, one CMA generation per batch of N1 + N2."""

    operator = "cmaes"

    def sampler(self) -> optuna.samplers.BaseSampler:
        """Optuna's CMA-ES (population ``children``)."""
        seed = self.problem.seed
        return optuna.samplers.CmaEsSampler(
            seed=seed, popsize=max(2, self.problem.search.children),
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False)


class RandomSearch(SamplerStrategy):
    """Uniform increments: the baseline every other strategy must beat."""

    operator = "random"

    def sampler(self) -> optuna.samplers.BaseSampler:
        """Optuna's random sampler: the baseline."""
        return optuna.samplers.RandomSampler(seed=self.problem.seed)
