"""The strategy interface: what to try next, and nothing else.

A strategy proposes candidates and is told their scores. It never touches the model, the
ledger, the Parquet tables or Ray: the driver (:mod:`longrope_search.search.driver`) owns all of
those, so every strategy gets crash-safe resume, early stopping, progress, cancel, cost
accounting and the Ray pool for free. (Ray Tune's ``Searcher`` and Optuna's samplers draw the
same line.)

Lifecycle, as the driver runs it:

1. ``Strategy(problem)``: constructed once per run from a :class:`SearchProblem` (the space,
   the seed candidates, the operator settings, the RNG seed). It must not do expensive work.
2. ``ask()`` is called whenever the evaluator has room for another candidate. It returns an
   :class:`Individual`, or ``None`` when the strategy cannot propose anything until results it
   is owed come back (Algorithm 1's generation barrier, a batch sampler's batch) or when it has
   nothing more to propose (see ``finished``).
3. ``tell(individual, evaluation)`` is called exactly once for every individual ``ask``
   returned, in completion order, which on a Ray pool is not ask order. A strategy that wants
   to be independent of completion order buffers its results and uses them in ask order
   (generation barrier). An evaluation may be pruned (partial ``nll``) or failed (empty).
   An individual whose genome was scored before is told at once, without scoring.
4. The driver stops asking when the budget (evaluations or forward tokens) is spent, or when
   ``finished`` is true, waits for the candidates in flight, and ends the job.

Resume: the driver replays a killed run by calling ``ask``/``tell`` in the order the ledger
recorded them, taking the results from the ledger, so a strategy that draws all its randomness
from ``problem.seed`` and the order of calls continues exactly where it stopped, even when that
order came from a Ray pool. Strategies must therefore be deterministic for a given seed and
call order: use ``numpy.random.default_rng`` seeded from ``problem.seed``, never global state.

To add a strategy: subclass :class:`Strategy` in one module and add it to the ``STRATEGIES``
table in :mod:`longrope_search.search.strategies` (or, from your own package, call
:func:`~longrope_search.search.strategies.register_strategy` or declare an entry point in the
``longrope_search.strategies`` group).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from longrope_search.search.space import Genome, SearchSpace
from longrope_search.search.strategies.settings import (
    SearchSettings,
    StrategyOptions,
    parse_options,
)
from longrope_search.search.trial import Evaluation, Individual


@dataclass(frozen=True)
class SearchProblem:
    """What a strategy is given: where to search and where to start."""

    space: SearchSpace
    seed_candidates: Sequence[tuple[str, Genome]]  # (name, genome): PI, NTK, YaRN, files
    search: SearchSettings  # population, operators, top-k (shared by every strategy)
    seed: int = 0  # the RNG seed
    options: Mapping[str, Any] = field(default_factory=dict)  # the spec's strategy_options
    budget: int | None = None  # the candidates the driver will ask for at most
    budget_tokens: int | None = None  # the forward tokens it will spend at most
    k_documents: int | None = None  # the documents a candidate is scored on


class Strategy(ABC):
    """Base class of search strategies; see the module docstring for the lifecycle."""

    #: whether the candidates it proposes depend on the order results arrive in (only
    #: strategies without a barrier): in-process and Ray runs then make different tables.
    order_dependent: ClassVar[bool] = False
    #: its ``strategy_options`` (types, defaults, bounds); the job spec checks them with it
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self.options = parse_options(type(self).__name__, self.Options, problem.options)

    @abstractmethod
    def ask(self) -> Individual | None:
        """The next candidate to score, or None while waiting for results (or when done)."""

    @abstractmethod
    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        """The result of one individual that ``ask`` returned."""

    @property
    def finished(self) -> bool:
        """True when the strategy will propose nothing more (the budget aside)."""
        return False
