"""LongRoPE Algorithm 1: evolution in generations, behind the strategy interface.

Generation 0 is the seed candidates (PI, NTK, YaRN, user seeds) plus mutations of them up to
P. Each later generation keeps the top-k of the previous one (operator ``parent``) and adds N1
mutations and N2 crossovers of them. Generation g draws its randomness from
``default_rng([seed, g])`` and depends only on the evaluations of earlier generations, so the
candidates never depend on the order results arrive in: a Ray pool and an in-process run make
the same tables. The barrier between generations is the price: see ``steady`` for a strategy
without one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from longrope_search.errors import ConfigError
from longrope_search.search.operators import crossover, mutate
from longrope_search.search.space import Genome, SearchSpace
from longrope_search.search.strategies.base import SearchProblem, Strategy
from longrope_search.search.strategies.settings import SearchSettings
from longrope_search.search.trial import (
    PARENT,
    Evaluation,
    Individual,
    Operator,
    ranked,
    seed_operator,
)


def initial_population(space: SearchSpace, seed_candidates: Sequence[tuple[str, Genome]],
                       size: int, rng: np.random.Generator, mutation_prob: float,
                       seen: set[str]) -> list[Individual]:
    """Generation 0: the distinct seed candidates, then mutations of them (round robin) up to
    ``size``. Adds every key it makes to ``seen``."""
    if not seed_candidates:
        raise ConfigError("seeds", "no seed candidates", "seed with PI, NTK and YaRN")
    pop: list[Individual] = []
    for name, genome in seed_candidates:
        if genome.key not in seen and len(pop) < size:
            seen.add(genome.key)
            pop.append(Individual(genome, 0, seed_operator(name)))
    bases = list(pop)
    while len(pop) < size:
        parent = bases[len(pop) % len(bases)]
        child = mutate(parent.genome, space, rng, mutation_prob, seen)
        seen.add(child.key)
        pop.append(Individual(child, 0, Operator.MUTATION, (parent.key,)))
    return pop


def breed(parents: Sequence[Individual], kind: str, generation: int, space: SearchSpace,
          rng: np.random.Generator, mutation_prob: float, seen: set[str]) -> Individual:
    """One child of ``parents`` (the top-k): a mutation of one, or a crossover of two."""
    if kind == Operator.CROSSOVER and len(parents) >= 2:
        a, b = rng.choice(len(parents), size=2, replace=False)
        pa, pb = parents[a], parents[b]
        child = crossover(pa.genome, pb.genome, space, rng, mutation_prob, seen)
        ind = Individual(child, generation, Operator.CROSSOVER, (pa.key, pb.key))
    else:
        p = parents[rng.integers(len(parents))]
        child = mutate(p.genome, space, rng, mutation_prob, seen)
        ind = Individual(child, generation, Operator.MUTATION, (p.key,))
    seen.add(child.key)
    return ind


def next_generation(generation: int, previous: Sequence[Individual],
                    evaluations: Mapping[str, Evaluation], space: SearchSpace,
                    config: SearchSettings, rng: np.random.Generator,
                    seen: set[str]) -> list[Individual]:
    """Generation ``generation`` from the scored previous one: top-k ∪ N1 mutations ∪ N2
    crossovers (Algorithm 1, lines 5–9)."""
    parents = ranked(previous, evaluations)[: config.top_k]
    if not parents:
        raise RuntimeError(f"generation {generation - 1} has no successful evaluation")
    pop = [Individual(p.genome, generation, PARENT, (p.key,)) for p in parents]
    p = config.mutation_prob
    pop += [breed(parents, Operator.MUTATION, generation, space, rng, p, seen)
            for _ in range(config.mutations)]
    if len(parents) >= 2:
        pop += [breed(parents, Operator.CROSSOVER, generation, space, rng, p, seen)
                for _ in range(config.crossovers)]
    return pop


class Evolution(Strategy):
    """Algorithm 1: hands out one generation, waits for all of it, breeds the next."""

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__(problem)
        self.seen: set[str] = set()
        self.generation = 0
        cfg = problem.search
        self.members = initial_population(problem.space, problem.seed_candidates,
                                          cfg.population, self._rng(0), cfg.mutation_prob,
                                          self.seen)
        self.to_ask = deque(self.members)
        self.untold = 0
        self.results: dict[str, Evaluation] = {}

    def _rng(self, generation: int) -> np.random.Generator:
        return np.random.default_rng([self.problem.seed, generation])

    def ask(self) -> Individual | None:
        if not self.to_ask:
            if self.untold:
                return None  # the generation barrier
            if self.generation >= self.problem.search.generations:
                return None  # generation T is done: so is the plan, whatever budget is left
            self.generation += 1
            self.members = next_generation(self.generation, self.members, self.results,
                                           self.problem.space, self.problem.search,
                                           self._rng(self.generation), self.seen)
            self.to_ask = deque(self.members)
        self.untold += 1
        return self.to_ask.popleft()

    @property
    def finished(self) -> bool:
        """Generation T asked and told (Algorithm 1's plan; a larger budget does not extend it)."""
        return (not self.to_ask and not self.untold
                and self.generation >= self.problem.search.generations)

    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        self.results[individual.key] = evaluation
        self.untold -= 1
