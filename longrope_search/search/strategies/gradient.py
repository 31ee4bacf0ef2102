"""Gradient descent on λ through the frozen model: multi-start projected Adam.

The fitness (mean NLL of the search documents at L') is smooth in λ, and one backward pass
gives its gradient for every pair (:mod:`longrope_search.evaluation.gradient`). Each seed
candidate (PI, NTK, YaRN, files) starts a descent on x = log λ of the searched pairs:

    x ← Π(x − lr · Adam(∂L/∂x)),   ∂L/∂x_i = λ_i · ∂L/∂λ_i

where Π projects onto the space: the closest non-decreasing vector (isotonic regression, pool
adjacent violators), clipped to [log λ_min, log λ_max]. Working on log λ keeps the gradient
alive everywhere (no flat softplus increments) and makes lr a relative step. Starts take turns,
one step each, so a pool of workers runs several starts at once; each step is a candidate like
any other (operator ``gradient``, parent = the start's previous step, exact λ off the grid).

After ``steps`` steps per start (fewer if the budget in evaluations would not leave room for
the sweep), the best λ found is put on the grid and scored with every n̂ of
the space (n̂ is discrete: it is chosen by scoring, not by gradient); those grid candidates are
the strategy's results. The attention factor stays the job's.

Options (``strategy_options``): ``steps`` per start (30), ``lr`` (0.05).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from longrope_search.search.space import Genome, SearchSpace
from longrope_search.search.strategies.base import SearchProblem, Strategy
from longrope_search.search.strategies.settings import StrategyOptions
from longrope_search.search.trial import (
    GRADIENT,
    MINIBATCH,
    OK,
    Evaluation,
    Individual,
    Operator,
    seed_operator,
)

BETAS, EPS = (0.9, 0.999), 1e-8


def isotonic(x: np.ndarray) -> np.ndarray:
    """The non-decreasing vector closest to ``x`` in L2 (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, size]
    for v in x:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]
    return np.concatenate([np.full(int(n), m) for m, n in blocks])


@dataclass
class Start:
    """One descent: its position, Adam's moments, its best point so far."""

    name: str
    x: np.ndarray  # log λ of the searched pairs
    n_hat: int
    m1: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    t: int = 0  # steps taken
    last: str = ""  # key of its previous step
    best: tuple[float, np.ndarray] | None = None
    recent: list[float] = field(default_factory=list)  # its last steps' losses, one a minibatch

    def __post_init__(self) -> None:
        self.m1, self.m2 = np.zeros_like(self.x), np.zeros_like(self.x)

    def adam(self, grad: np.ndarray, lr: float) -> np.ndarray:
        """One Adam step for gradient ``grad``: the move, ``lr`` m̂/(√v̂ + ε)."""
        self.t += 1
        self.m1 = BETAS[0] * self.m1 + (1 - BETAS[0]) * grad
        self.m2 = BETAS[1] * self.m2 + (1 - BETAS[1]) * grad**2
        m1 = self.m1 / (1 - BETAS[0] ** self.t)
        m2 = self.m2 / (1 - BETAS[1] ** self.t)
        return lr * m1 / (np.sqrt(m2) + EPS)


class LogLambda:
    """A space's descent coordinates: x = log λ of its searched pairs, and the projection Π."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        lo, hi = space.bounds()
        self.bounds = lo[0] * space.step, hi[0] * space.step  # λ's, on the grid's ends
        self.low, self.high = np.log(self.bounds[0]), np.log(self.bounds[1])

    def position(self, genome: Genome) -> np.ndarray:
        """x = log λ of the searched pairs."""
        return np.log(self.space.lambdas(genome)[self.space.searched])

    def start(self, name: str, genome: Genome, last: str = "") -> Start:
        """A descent from ``genome``."""
        return Start(name, self.position(genome), genome.n_hat, last=last)

    def lambdas(self, x: np.ndarray) -> np.ndarray:
        # exp(log b) may miss b by an ulp
        """Every pair's λ at log-position ``x``, clipped to the bounds."""
        return self.space.expand(np.clip(np.exp(x), *self.bounds))

    def on_grid(self, x: np.ndarray, n_hat: int) -> Genome:
        """The nearest valid genome to log-position ``x`` (rounded, repaired to monotone)."""
        grid = np.round(np.exp(x) / self.space.step).astype(np.int64)
        return self.space.complete(self.space.repair(grid), n_hat)

    def step(self, start: Start, generation: int, operator: str = Operator.GRADIENT,
             minibatches: int = 1) -> Individual:
        """The candidate that asks for ``start``'s loss and gradient at its position, on the
        minibatch whose turn it is (step t: documents i ≡ t mod ``minibatches``)."""
        return Individual(self.on_grid(start.x, start.n_hat), generation, operator,
                          (start.last,) if start.last else (), tuple(self.lambdas(start.x)),
                          GRADIENT, (start.t % minibatches, minibatches))

    def tell(self, start: Start, individual: Individual, evaluation: Evaluation, lr: float,
             steps: int) -> None:
        """A step's result for its descent: a move on, or the end (a failed step)."""
        if evaluation.status in (OK, MINIBATCH):
            self.advance(start, individual, evaluation, lr)
        else:
            start.last = individual.key
            start.t = steps  # a failed step ends its descent

    def advance(self, start: Start, individual: Individual, evaluation: Evaluation,
                lr: float) -> None:
        """Record ``start``'s step result, then move it: x ← Π(x − lr · Adam(λ ∘ ∂L/∂λ)).

        With n minibatches, a point's loss is the mean of the last n steps' (every document
        once, the earlier ones at the points just before), so no step is spent on scoring."""
        start.last = individual.key
        count = individual.minibatch[1]
        start.recent = [*start.recent, evaluation.mean_nll][-count:]
        loss = float(np.mean(start.recent))
        if len(start.recent) == count and (start.best is None or loss < start.best[0]):
            start.best = (loss, start.x.copy())
        self.move(start, np.asarray(evaluation.extra["gradient"]), lr)

    def move(self, start: Start, full: np.ndarray, lr: float) -> None:
        """One projected Adam step from ∂L/∂λ of every pair: x ← Π(x − lr · Adam(λ ∘ ∂L/∂λ))."""
        x = start.x
        grad = self.searched_gradient(full, x)
        start.x = np.clip(isotonic(x - start.adam(grad * np.exp(x), lr)), self.low, self.high)

    def searched_gradient(self, full: np.ndarray, x: np.ndarray) -> np.ndarray:
        """∂L/∂λ of the searched pairs; in LongRoPE2 mode λ_cd also moves the pairs below it
        (λ_i = λ_cd^(i/cd)), which the chain rule adds to its component."""
        space = self.space
        cd = space.critical_dim or 0
        grad = full[space.searched].copy()
        if cd:
            i = np.arange(cd)
            lam_cd = float(np.exp(x[0]))
            grad[0] += float(np.sum(full[:cd] * (i / cd) * lam_cd ** (i / cd - 1)))
        return grad


class GradientOptions(StrategyOptions):
    """gradient's options: the steps of each descent and Adam's step size."""

    steps: int = Field(30, ge=1, le=10_000, description="steps per start")
    lr: float = Field(0.05, ge=1e-6, le=10, description="Adam's step size on x = log λ")


class GradientDescent(Strategy):
    # each descent is deterministic, but the starts take turns in the order results arrive
    order_dependent = True
    Options = GradientOptions

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__(problem)
        self.coords = LogLambda(problem.space)
        self.starts = [self.coords.start(name, g) for name, g in problem.seed_candidates]
        if problem.budget is not None:  # leave room for the n̂ sweep within the budget
            room = (problem.budget - len(problem.space.n_hat_choices)) // max(1, len(self.starts))
            self.options["steps"] = max(1, min(self.options["steps"], room))
        self.turns = deque(range(len(self.starts)))  # starts whose next step can be asked
        self.of: dict[str, int] = {}  # key of a step in flight → its start
        self.final: deque[Individual] | None = None  # the n̂ sweep, once descents are done

    def ask(self) -> Individual | None:
        while self.turns:
            i = self.turns.popleft()
            start = self.starts[i]
            if start.t >= self.options["steps"]:
                continue  # this descent is over
            ind = self.coords.step(start, start.t,
                                   Operator.GRADIENT if start.t else seed_operator(start.name))
            self.of[ind.key] = i
            return ind
        if self.of:
            return None  # steps in flight: their starts go on
        if self.final is None:
            self.final = self._n_hat_sweep()
        return self.final.popleft() if self.final else None

    def _n_hat_sweep(self) -> deque[Individual]:
        """The best λ of all descents, on the grid, with every n̂ of the space."""
        done = [s for s in self.starts if s.best is not None]
        if not done:
            return deque()
        start = min(done, key=lambda s: s.best[0])
        x = start.best[1]
        generation = self.options["steps"]
        return deque(Individual(self.coords.on_grid(x, n), generation, Operator.N_HAT_SWEEP,
                                (start.last,)) for n in self.problem.space.n_hat_choices)

    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        i = self.of.pop(individual.key, None)
        if i is None:
            return  # an n̂-sweep candidate: the driver ranks it
        self.coords.tell(self.starts[i], individual, evaluation, self.options["lr"],
                         self.options["steps"])
        self.turns.append(i)

    @property
    def finished(self) -> bool:
        return self.final is not None and not self.final and not self.of
