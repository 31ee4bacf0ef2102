"""The search's vocabulary: an individual (a genome and where it came from), its evaluation,
the evaluation statuses and the ranking every strategy and report shares.

Cost is counted in one unit for every strategy: forward tokens, the tokens a model forward
pass processed for this evaluation (documents × tokens actually scored; a pruned candidate
counts the documents it was scored on; a backward pass counts as two forwards).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

import numpy as np

from longrope_search.rope import Candidate
from longrope_search.search.space import Genome, SearchSpace


class Status(StrEnum):
    """An evaluation's status (the ledger's, the tables' ``status`` column, the API's)."""

    OK = "ok"  # complete
    PRUNED = "pruned"  # stopped early by the pruning rule
    FAILED = "failed"  # the scorer raised (a worker died on it too often)
    # a gradient step on a minibatch of the documents: its NLL is over those documents only,
    # so like a pruned one it is no result and ranks nowhere
    MINIBATCH = "minibatch"
    MISSING = "missing"  # in a table only: asked, never scored (its run stopped first)


OK, PRUNED, FAILED, MINIBATCH = (s.value for s in (Status.OK, Status.PRUNED, Status.FAILED,
                                                   Status.MINIBATCH))
MISSING = Status.MISSING.value
STATUSES = (OK, PRUNED, FAILED, MINIBATCH)  # what an evaluation can have

#: The operator prefix of a seed candidate: ``seed:pi``, ``seed:yarn``, ``seed:<file>``.
SEED_PREFIX = "seed:"


def seed_operator(name: str) -> str:
    """The operator of the seed candidate ``name`` (a seed method or a factor file)."""
    return f"{SEED_PREFIX}{name}"


def seed_name(operator: str) -> str | None:
    """The seed an operator names, or None for any other operator."""
    return operator.removeprefix(SEED_PREFIX) if operator.startswith(SEED_PREFIX) else None


#: The ``minibatch`` (index, count) of a step on all the documents: every one, in one batch.
ALL_DOCUMENTS = (0, 1)


class Operator(StrEnum):
    """How an individual was made (the tables' ``operator`` column); a seed candidate's is
    ``seed:<name>`` (:func:`seed_operator`)."""

    MUTATION = "mutation"
    CROSSOVER = "crossover"
    # carried over unchanged into a new generation: not a new candidate, costs nothing and does
    # not count against the budget
    PARENT = "parent"
    GRADIENT = "gradient"  # a descent's step
    POLISH = "gradient:polish"  # memetic: a descent's best point, put back on the grid
    N_HAT_SWEEP = "gradient:n_hat"  # the gradient strategy's n̂ choices at its best λ
    N_HAT_ZERO = "n_hat=0"  # the best λ re-scored without n̂, outside the search


PARENT = Operator.PARENT.value

#: What the evaluator does with an individual: score it (per-document NLL, prunable), or score
#: it and return the gradient of its mean NLL in λ (``extra["gradient"]``; a backward pass costs
#: two forwards).
SCORE, GRADIENT = "score", "gradient"


@dataclass(frozen=True)
class Individual:
    """A genome proposed by a strategy, with its provenance.

    ``lambdas`` holds exact λ off the grid (a gradient step's); the genome is then its nearest
    grid point, for the tables, and the individual is told apart from it by its key. A gradient
    step's ``minibatch`` (i, n) takes it on documents i, i + n, i + 2n, … only.
    """

    genome: Genome
    generation: int  # the strategy's generation (a batch of candidates), for the tables
    operator: str  # "seed:<name>", "mutation", "crossover", "parent", "tpe", …
    parents: tuple[str, ...] = ()
    lambdas: tuple[float, ...] | None = None
    task: str = SCORE
    minibatch: tuple[int, int] = ALL_DOCUMENTS

    @cached_property
    def key(self) -> str:
        """Stable identity (immutable, so hashed once, like the genome's)."""
        if self.lambdas is None and self.task == SCORE:
            return self.genome.key
        h = hashlib.blake2b(self.genome.key.encode(), digest_size=10)
        h.update(np.asarray(self.lambdas or (), dtype=np.float64).tobytes())
        h.update(self.task.encode())
        if self.minibatch != ALL_DOCUMENTS:
            h.update(np.asarray(self.minibatch, dtype=np.int64).tobytes())
        return h.hexdigest()

    @property
    def is_new(self) -> bool:
        """Whether it is a new candidate, not a parent carried over."""
        return self.operator != PARENT


@dataclass(frozen=True)
class Evaluation:
    """Per-document mean NLL of one candidate; partial when pruned, empty when failed."""

    key: str
    nll: tuple[float, ...]
    status: str
    num_documents: int
    cost_tokens: int = 0  # forward tokens this evaluation spent
    extra: dict = field(default_factory=dict, compare=False)  # worker, seconds, …

    @cached_property
    def mean_nll(self) -> float:
        """Mean NLL over the documents scored (all of them when ok)."""
        return float(np.mean(self.nll)) if self.nll else math.inf

    @property
    def ppl(self) -> float:
        """exp(mean NLL); inf when nothing was scored."""
        return math.exp(self.mean_nll) if self.nll else math.inf


def lambdas_of(individual: Individual, space: SearchSpace) -> np.ndarray:
    """The λ an individual is evaluated with: its exact λ, else its genome's."""
    if individual.lambdas is not None:
        return np.asarray(individual.lambdas, dtype=np.float64)
    return space.lambdas(individual.genome)


def candidate(individual: Individual, space: SearchSpace, attention_factor: float,
              name: str = "") -> Candidate:
    """What an individual is scored as: its λ (exact, or its genome's), n̂ and the job's m."""
    return Candidate(lambdas_of(individual, space), individual.genome.n_hat, attention_factor,
                     name)


def ranked(individuals: Sequence[Individual], evaluations: Mapping[str, Evaluation]
           ) -> list[Individual]:
    """Completely evaluated individuals, best first (ties broken by key, for determinism)."""
    done = {i.key: i for i in individuals
            if i.key in evaluations and evaluations[i.key].status == OK}
    return sorted(done.values(), key=lambda i: (evaluations[i.key].mean_nll, i.key))
