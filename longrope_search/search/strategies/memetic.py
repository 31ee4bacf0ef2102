"""Memetic search: Algorithm 1 whose best candidates are polished by gradient steps.

Between polishes the search is Algorithm 1, generation for generation (:mod:`.search`).
After the first generation (generation 0, unless ``at_start`` is false), after every
``every``-th generation, and once more when the budget left would only just pay for it, the
``polish`` best candidates not polished before each take ``steps`` steps of the gradient
strategy's projected Adam on x = log λ (:class:`~.gradient.LogLambda`):

    x ← Π(x − lr · Adam(λ ∘ ∂L/∂λ))

from their own λ, with their own n̂. Each descent's best point goes back on the grid and is
scored like any child (operator ``gradient:polish``, parent = the descent's last step). It
joins the generation that was polished, so the next generation's top-k keeps it or not as
usual. One polish costs about ``polish × (3·steps + 1)`` complete evaluations in forward
tokens (a gradient step is a forward and a backward, counted as three forwards). A polish takes
fewer steps where the budget left would otherwise end it before its polished points are scored.

Options (``strategy_options``): ``every`` (3), ``polish`` (2), ``steps`` (8), ``lr`` (0.05),
``at_start`` (true; false: the first polish comes after generation ``every``), ``first_steps``
(0: as ``steps``; more makes the polish after generation 0 a longer descent from the seeds),
``diverse`` (0: a polish starts from its best candidates; n ≥ 2: from the best, then each time
from the one of the n best farthest in x from the starts chosen, max-min), ``minibatches`` (1:
every step on all the search documents; n: step t on documents i ≡ t mod n only, at 1/n of the
cost, so ``steps`` n-fold buys the same compute; a descent then takes whole rounds of n steps
and its best point is the one whose last n steps' losses, every document once, average lowest;
each such round counts in early stopping's bar as a complete result; with the steps' cost
counted in evaluations, ``budget.evaluations``, a step counts as one).
"""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import Field

from longrope_search.errors import ConfigError
from longrope_search.search.strategies.base import SearchProblem
from longrope_search.search.strategies.evolution import Evolution
from longrope_search.search.strategies.gradient import LogLambda, Start
from longrope_search.search.strategies.settings import StrategyOptions
from longrope_search.search.trial import OK, Evaluation, Individual, Operator, ranked

STEP_COST = 3  # a gradient step's forward tokens, in forwards (one forward, one backward)


class MemeticOptions(StrategyOptions):
    """memetic's options (the module docstring says what each does)."""

    every: int = Field(3, ge=1, le=10_000, description="polish after every every-th generation")
    polish: int = Field(2, ge=1, le=10_000, description="candidates polished each time")
    steps: int = Field(8, ge=1, le=10_000, description="gradient steps per polished candidate")
    lr: float = Field(0.05, ge=1e-6, le=10, description="Adam's step size on x = log λ")
    at_start: bool = Field(True, description="polish after generation 0 too")
    first_steps: int = Field(0, ge=0, le=10_000, description="steps of the first polish "
                             "(0: as steps)")
    diverse: int = Field(0, ge=0, le=10_000, description="0: polish the best; n: the max-min "
                         "diverse ones of the n best")
    minibatches: int = Field(1, ge=1, le=1_000, description="step t on documents i ≡ t mod n")


class Memetic(Evolution):
    # a polish's descents take turns in the order their results arrive
    order_dependent = True
    # measured best on the embedded model at 8× (results/bench_strategies/bench_strategies.md):
    # polishing from generation 0 and every 3 generations reached at half the budget what every
    # 10 reached with all of it
    Options = MemeticOptions

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__(problem)
        k = problem.k_documents
        if k is not None and self.options["minibatches"] > k:
            raise ConfigError("strategy_options.minibatches",
                              f"is {self.options['minibatches']}, with k_documents {k}",
                              f"give at most {k}: a minibatch needs a document")
        self.coords = LogLambda(problem.space)
        self.descents: list[Start] = []
        self.steps = self.options["steps"]  # steps of the current polish
        self.turns: deque[int] = deque()  # descents whose next step can be asked
        self.of: dict[str, int] = {}  # key of a step in flight → its descent
        self.polishing = False
        self.polished_at: set[int] = set()  # generations after which a polish ran
        self.started_from: set[str] = set()  # keys a descent started from
        self.final_done = False
        self.asked = 0  # new candidates asked
        self.spent = 0  # forward tokens told
        self.evaluation_tokens = 0  # a complete evaluation's cost, as seen

    def ask(self) -> Individual | None:
        if not self.polishing and self._polish_due():
            self._begin_polish()
        ind = self._ask_step() if self.polishing else super().ask()
        self.asked += ind is not None and ind.is_new
        return ind

    @property
    def finished(self) -> bool:
        return super().finished and not self.polishing and not self._polish_due()

    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        if individual.is_new:
            self.spent += evaluation.cost_tokens
        i = self.of.pop(individual.key, None)
        if i is None:
            if evaluation.status == OK:
                self.evaluation_tokens = max(self.evaluation_tokens, evaluation.cost_tokens)
            super().tell(individual, evaluation)
            return
        self.coords.tell(self.descents[i], individual, evaluation, self.options["lr"],
                         self.steps)
        self.turns.append(i)

    # -- when to polish -------------------------------------------------------------------------
    def _polish_due(self) -> bool:
        """At a generation's end (all of it told), every ``every`` generations (from generation
        0 with ``at_start``), and once when another generation would leave too little budget
        for a polish after it."""
        g = self.generation
        if self.to_ask or self.untold or g in self.polished_at:
            return False
        if g % self.options["every"] == 0 and (g > 0 or self.options["at_start"]):
            return True
        return not self.final_done and self._last_chance()

    def _last_chance(self) -> bool:
        """True when another generation would leave too little budget for a whole polish."""
        left = self._steps_left(self.options["polish"], reserve=self.problem.search.children)
        return left is not None and left < self.options["steps"]

    # -- a polish -------------------------------------------------------------------------------
    def _begin_polish(self) -> None:
        top = [i for i in ranked(self.members, self.results) if i.key not in self.started_from]
        self.descents = []
        for ind in self._starts(top):
            self.started_from.add(ind.key)
            self.descents.append(self.coords.start(ind.key, ind.genome, last=ind.key))
        self.turns = deque(range(len(self.descents)))
        first = self.generation == 0 and self.options["first_steps"] > 0
        steps = self.options["first_steps"] if first else self.options["steps"]
        # a descent the budget would cut short would never see its best point scored
        left = self._steps_left(max(1, len(self.descents)))
        steps = steps if left is None else min(steps, left)
        self.steps = steps - steps % self.options["minibatches"]  # whole rounds of minibatches
        self.polished_at.add(self.generation)
        self.final_done = self.final_done or self._last_chance()
        self.polishing = True

    def _starts(self, top: list[Individual]) -> list[Individual]:
        """The ``polish`` best of ``top`` (ranked), or with ``diverse`` = n the best, then each
        time the one of the n best whose nearest chosen start is farthest (L2 in x = log λ)."""
        n = self.options["polish"]
        if not self.options["diverse"]:
            return top[:n]
        pool = top[: max(n, self.options["diverse"])]
        x = {ind.key: self.coords.position(ind.genome) for ind in pool}
        chosen, rest = pool[:1], pool[1:]
        while rest and len(chosen) < n:
            far = max(rest, key=lambda c: min(float(np.linalg.norm(x[c.key] - x[s.key]))
                                              for s in chosen))
            chosen.append(far)
            rest.remove(far)
        return chosen

    def _steps_left(self, descents: int, reserve: int = 0) -> int | None:
        """The most steps each of ``descents`` descents can take with its polished point scored,
        within the budget left after ``reserve`` more evaluations (evaluations, and forward
        tokens when counted); None: no bound."""
        bounds = []
        if self.problem.budget is not None:
            bounds.append((self.problem.budget - self.asked - reserve) // descents - 1)
        if self.problem.budget_tokens is not None and self.evaluation_tokens:
            evaluations = (self.problem.budget_tokens - self.spent) // self.evaluation_tokens
            per_step = STEP_COST / self.options["minibatches"]  # in evaluations
            bounds.append(int(((evaluations - reserve) // descents - 1) // per_step))
        return max(0, min(bounds)) if bounds else None

    def _ask_step(self) -> Individual | None:
        while self.turns:
            i = self.turns.popleft()
            start = self.descents[i]
            if start.t < self.steps:
                ind = self.coords.step(start, self.generation,
                                       minibatches=self.options["minibatches"])
                self.of[ind.key] = i
                return ind
        if self.of:
            return None  # steps in flight: their descents go on
        self.polishing = False
        polished = self._polished()
        self.members += polished
        self.to_ask.extend(polished)
        return super().ask()

    def _polished(self) -> list[Individual]:
        """Each descent's best point on the grid, if it is a new candidate."""
        out = []
        for start in self.descents:
            if start.best is None:
                continue
            genome = self.coords.on_grid(start.best[1], start.n_hat)
            if genome.key not in self.seen:
                self.seen.add(genome.key)
                out.append(Individual(genome, self.generation, Operator.POLISH, (start.last,)))
        return out
