"""The search's vocabulary: an individual (a genome and where it came from), its evaluation,
the evaluation statuses and the ranking every strategy and report shares.

Cost is counted in one unit for every strategy: forward tokens, the tokens a model forward
pass processed for this evaluation (documents × tokens actually scored; a pruned candidate
counts the documents it was scored on; a backward pass counts as two forwards).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from longrope_search.search.space import Genome

#: Evaluation statuses: complete, stopped early by the pruning rule, or failed.
OK, PRUNED, FAILED = "ok", "pruned", "failed"
STATUSES = (OK, PRUNED, FAILED)

#: The operator of an individual carried over unchanged into a new generation: it is not a new
#: candidate, costs nothing and does not count against the budget.
PARENT = "parent"


@dataclass(frozen=True)
class Individual:
    """A genome proposed by a strategy, with its provenance."""

    genome: Genome
    generation: int  # the strategy's generation (a batch of candidates), for the tables
    operator: str  # "seed:<name>", "mutation", "crossover", "parent", "tpe", …
    parents: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.genome.key

    @property
    def is_new(self) -> bool:
        """Whether it is a new candidate (counted against the budget)."""
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
        return math.exp(self.mean_nll) if self.nll else math.inf


def ranked(individuals: Sequence[Individual], evaluations: Mapping[str, Evaluation]
           ) -> list[Individual]:
    """Completely evaluated individuals, best first (ties broken by key, for determinism)."""
    done = {i.key: i for i in individuals
            if i.key in evaluations and evaluations[i.key].status == OK}
    return sorted(done.values(), key=lambda i: (evaluations[i.key].mean_nll, i.key))
