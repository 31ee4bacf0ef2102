"""LongRoPE Algorithm 1 as a pure, deterministic ask/tell engine.

Generation 0 is the seeds (PI, NTK, YaRN, user seeds) plus mutations of them up to P. Each later
generation keeps the top-k of the previous one and adds N1 mutations and N2 crossovers of them.
Generation g draws its randomness from ``default_rng([seed, g])`` and depends only on the
evaluations of earlier generations, so a resumed search replays exactly the run it continues.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from longrope_search.errors import ConfigError
from longrope_search.search.operators import crossover, mutate
from longrope_search.search.space import Genome, SearchSpace

OK, PRUNED, FAILED = "ok", "pruned", "failed"


@dataclass(frozen=True)
class EvolutionConfig:
    """Algorithm 1's hyperparameters; defaults are the paper's for targets up to 256k."""

    population: int = 64
    mutations: int = 16
    crossovers: int = 16
    top_k: int = 32
    mutation_prob: float = 0.3
    generations: int = 40

    def __post_init__(self) -> None:
        checks = {
            "population": self.population >= 2, "top_k": 1 <= self.top_k <= self.population,
            "mutations": self.mutations >= 0, "crossovers": self.crossovers >= 0,
            "mutation_prob": 0 < self.mutation_prob <= 1, "generations": self.generations >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"evolution.{name}", f"invalid value {getattr(self, name)!r}",
                                  "see configs/ for working values (P 64, N1 16, N2 16, k 32, "
                                  "p 0.3, T 40)")
        if self.mutations + self.crossovers == 0 and self.generations:
            raise ConfigError("evolution.mutations", "no mutations and no crossovers",
                              "set mutations or crossovers > 0")

    @property
    def budget(self) -> int:
        """The most evaluations a run can make (pruned ones included)."""
        return self.population + self.generations * (self.mutations + self.crossovers)


@dataclass(frozen=True)
class Individual:
    genome: Genome
    generation: int
    operator: str  # "seed:<name>", "mutation" or "crossover"
    parents: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.genome.key


@dataclass(frozen=True)
class Evaluation:
    """Per-document mean NLL of one candidate; partial when pruned, empty when failed."""

    key: str
    nll: tuple[float, ...]
    status: str
    num_documents: int
    extra: dict = field(default_factory=dict, compare=False)  # worker, seconds, …

    @property
    def mean_nll(self) -> float:
        """Mean NLL over the documents scored (all of them when ok)."""
        return float(np.mean(self.nll)) if self.nll else math.inf

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll) if self.nll else math.inf


def ranked(individuals: Sequence[Individual], evaluations: Mapping[str, Evaluation]
           ) -> list[Individual]:
    """Completely evaluated individuals, best first (ties broken by key, for determinism)."""
    done = {i.key: i for i in individuals
            if i.key in evaluations and evaluations[i.key].status == OK}
    return sorted(done.values(), key=lambda i: (evaluations[i.key].mean_nll, i.key))


class Evolution:
    """Ask for a generation's individuals; the caller scores them and asks for the next."""

    def __init__(self, space: SearchSpace, seeds: Sequence[tuple[str, Genome]],
                 config: EvolutionConfig, seed: int = 0) -> None:
        if not seeds:
            raise ConfigError("seeds", "no seed candidates", "seed with PI, NTK and YaRN")
        self.space, self.config, self.seed = space, config, seed
        self.seeds = list(seeds)
        self.seen: set[str] = set()

    def _rng(self, generation: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, generation])

    def initial(self) -> list[Individual]:
        """Generation 0: the distinct seeds, then mutations of them (round robin) up to P."""
        rng = self._rng(0)
        pop: list[Individual] = []
        for name, genome in self.seeds:
            if genome.key not in self.seen and len(pop) < self.config.population:
                self.seen.add(genome.key)
                pop.append(Individual(genome, 0, f"seed:{name}"))
        bases = list(pop)
        while len(pop) < self.config.population:
            parent = bases[len(pop) % len(bases)]
            child = mutate(parent.genome, self.space, rng, self.config.mutation_prob, self.seen)
            self.seen.add(child.key)
            pop.append(Individual(child, 0, "mutation", (parent.key,)))
        return pop

    def next(self, generation: int, previous: Sequence[Individual],
             evaluations: Mapping[str, Evaluation]) -> list[Individual]:
        """Generation ``generation`` from the scored previous one: top-k ∪ N1 mutations ∪ N2
        crossovers."""
        cfg, rng = self.config, self._rng(generation)
        parents = ranked(previous, evaluations)[: cfg.top_k]
        if not parents:
            raise RuntimeError(f"generation {generation - 1} has no successful evaluation")
        pop = [Individual(p.genome, generation, "parent", (p.key,)) for p in parents]
        for _ in range(cfg.mutations):
            p = parents[rng.integers(len(parents))]
            child = mutate(p.genome, self.space, rng, cfg.mutation_prob, self.seen)
            self.seen.add(child.key)
            pop.append(Individual(child, generation, "mutation", (p.key,)))
        for _ in range(cfg.crossovers):
            if len(parents) < 2:
                break
            a, b = rng.choice(len(parents), size=2, replace=False)
            pa, pb = parents[a], parents[b]
            child = crossover(pa.genome, pb.genome, self.space, rng, cfg.mutation_prob,
                              self.seen)
            self.seen.add(child.key)
            pop.append(Individual(child, generation, "crossover", (pa.key, pb.key)))
        return pop
