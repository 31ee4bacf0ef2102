"""Steady-state evolution: Algorithm 1's operators without its generation barrier.

The first P candidates are Algorithm 1's generation 0. Breeding starts once k of them are
scored completely (or all of them are back); from then on every ``ask`` breeds one child from
the current top-k of everything scored so far: a mutation with probability N1 / (N1 + N2),
else a crossover, with the same operators, rates and budget. So whenever a worker is free there
is a candidate for it, and a large pool stays busy where Algorithm 1 would wait for the slowest
candidate of each generation. In-process it is deterministic for a seed; on a Ray pool the
parents a child is bred from depend on which results have arrived. For the tables, candidates
are grouped in blocks of P ("generations" of birth order).
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from longrope_search.search.strategies.base import SearchProblem, Strategy
from longrope_search.search.strategies.evolution import breed, initial_population
from longrope_search.search.trial import OK, Evaluation, Individual


class SteadyState(Strategy):
    order_dependent = True

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__(problem)
        cfg = problem.evolution
        self.rng = np.random.default_rng([problem.seed, 1])
        self.seen: set[str] = set()
        self.to_ask = deque(initial_population(problem.space, problem.seed_candidates,
                                               cfg.population, np.random.default_rng(
                                                   [problem.seed, 0]),
                                               cfg.mutation_prob, self.seen))
        self.initial_untold = {ind.key for ind in self.to_ask}
        self.born = 0
        # complete results, best first: (mean NLL, key, individual), as ``ranked`` orders them;
        # kept sorted as results arrive, so an ask costs O(k), not a sort of everything so far
        self.ranking: list[tuple[float, str, Individual]] = []

    def ask(self) -> Individual | None:
        if self.to_ask:
            self.born += 1
            return self.to_ask.popleft()
        cfg = self.problem.evolution
        if len(self.ranking) < cfg.top_k and self.initial_untold:
            return None  # too few parents yet: breeding from one would waste the pool
        parents = [ind for _, _, ind in self.ranking[: cfg.top_k]]
        if not parents:
            return None
        kind = "mutation" if self.rng.random() * max(1, cfg.children) < cfg.mutations \
            else "crossover"
        child = breed(parents, kind, self.born // cfg.population, self.problem.space,
                      self.rng, cfg.mutation_prob, self.seen)
        self.born += 1
        return child

    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        self.initial_untold.discard(individual.key)
        if evaluation.status == OK:
            bisect.insort(self.ranking, (evaluation.mean_nll, individual.key, individual),
                          key=lambda r: (r[0], r[1]))
