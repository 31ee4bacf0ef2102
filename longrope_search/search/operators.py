"""Mutation and crossover that always return a valid, unseen genome in bounded time.

No open-ended rejection loops: mutation samples each changed pair between its neighbours (so
monotonicity holds by construction), crossover repairs by a running maximum, and both give up
after a fixed number of tries, falling back to a fresh sample of the space; when even that only
finds seen genomes the space is exhausted and :class:`SpaceExhausted` is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Container

import numpy as np

from longrope_search.search.space import Genome, SearchSpace

MAX_TRIES = 16


class SpaceExhausted(RuntimeError):
    """Every genome the operators could reach has been seen already."""


def _mutate_once(parent: Genome, space: SearchSpace, rng: np.random.Generator,
                 p: float) -> Genome:
    old = parent.grid[space.searched]
    new = old.copy()
    lo, hi = space.bounds()
    gap = 1 if space.strict else 0
    for i in range(new.size):
        if rng.random() < p:
            low = new[i - 1] + gap if i else lo[i]
            high = old[i + 1] - gap if i + 1 < new.size else hi[i]
            new[i] = rng.integers(low, high + 1)
    n_hat = (int(rng.choice(space.n_hat_choices)) if rng.random() < p else parent.n_hat)
    return space.complete(new, n_hat)


def _crossover_once(a: Genome, b: Genome, space: SearchSpace, rng: np.random.Generator,
                    p: float) -> Genome:
    ga, gb = a.grid[space.searched], b.grid[space.searched]
    child = np.where(rng.random(ga.size) < p, gb, ga)
    n_hat = b.n_hat if rng.random() < 0.5 else a.n_hat
    return space.complete(space.repair(child), n_hat)


def _unseen(make: Callable[[float], Genome], space: SearchSpace, rng: np.random.Generator,
            p: float, seen: Container[str]) -> Genome:
    for attempt in range(MAX_TRIES):
        child = make(min(1.0, p * 2 ** (attempt // 4)))  # change more when stuck
        if child.key not in seen:
            return child
    for _ in range(MAX_TRIES):
        child = space.sample(rng)
        if child.key not in seen:
            return child
    raise SpaceExhausted(f"no unseen genome after {2 * MAX_TRIES} tries")


def mutate(parent: Genome, space: SearchSpace, rng: np.random.Generator, p: float,
           seen: Container[str]) -> Genome:
    """Each searched pair, with probability p, redrawn between its neighbours' values; n̂
    redrawn with probability p."""
    return _unseen(lambda q: _mutate_once(parent, space, rng, q), space, rng, p, seen)


def crossover(a: Genome, b: Genome, space: SearchSpace, rng: np.random.Generator, p: float,
              seen: Container[str]) -> Genome:
    """Each searched pair, with probability p, taken from ``b`` instead of ``a``, then repaired
    to be monotone; n̂ from either parent."""
    return _unseen(lambda q: _crossover_once(a, b, space, rng, q), space, rng, p, seen)
