"""Stop scoring a candidate once its partial score shows it will not enter the top-k.

Documents are scored in a fixed order, and after each one a rule looks at the candidate's
per-document NLLs so far, ``x_0 … x_{j-1}`` of n, against T, the k-th best mean NLL. Two rules:

``bound`` (the default) is a bound. The final mean NLL is at least
``(Σ_{d<j} x_d + Σ_{d≥j} f_d) / n``, where the floor f_d is the best NLL any candidate has reached
on document d, less a margin. The candidate is pruned when that exceeds T. The only assumption is
that no new candidate beats the best so far on a document by more than the margin.

``sequential`` is a one-sided sequential test, a race in the sense of Maron & Moore. Documents
differ much more from each other than candidates do, so it first removes each document's
offset, ``o_d = mean_i (X_id − X̄_i)``, measured on the top-k parents X. Then it estimates the
final mean as ``μ̂_j = (1/j) Σ_{d<j} (x_d − o_d)``. The error of that estimate after j documents,
``r = X̄_i − μ̂_j(X_i)``, is measured on the same parents (mean a_j, deviation σ_j). The candidate
is pruned when ``μ̂_j + a_j − z·σ_j > T``. The test prunes more than the bound. The price is a
small chance, falling with z, of stopping a candidate that would have entered the top-k. That
chance would be Φ(−z) per look if the errors were normal; they have heavier tails. Hence the
default z = 4. ``tools/early_stopping_rules.py`` measures both rules on a complete run.

Both rules are fixed when a generation starts, from earlier generations only (a descent's
minibatch steps count there by rounds: :func:`minibatch_rounds`). What is pruned
therefore never depends on the order in which candidates are evaluated, or on which worker
finished first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from longrope_search.search.trial import MINIBATCH, OK, Evaluation, Individual

Rule = Literal["bound", "sequential"]  # a job's early_stopping.rule
RULES: tuple[str, ...] = get_args(Rule)
BOUND, SEQUENTIAL = RULES
MIN_CALIBRATION = 16  # parents the sequential test measures its error on, at least


@dataclass(frozen=True)
class FloorBound:
    """Prune when ``(Σ_{d<j} x_d + Σ_{d≥j} f_d) / n > T``."""

    threshold: float  # T: the k-th best mean NLL when the generation started
    floors: np.ndarray  # f_d: per-document optimistic NLL

    def should_prune(self, partial: Sequence[float]) -> bool:
        """Whether the mean NLL, with each document not yet scored at its floor, already
        exceeds ``T``: the candidate cannot reach the top k."""
        j, n = len(partial), self.floors.size
        if j >= n:
            return False
        return (float(np.sum(partial)) + float(self.floors[j:].sum())) / n > self.threshold


@dataclass(frozen=True)
class SequentialTest:
    """Prune when ``μ̂_j + a_j − z·σ_j > T``, with μ̂_j from the offset-corrected documents."""

    threshold: float  # T
    offsets: np.ndarray  # o_d, one per document
    lower: np.ndarray  # a_j − z·σ_j for j = 1 … n−1 documents scored

    def should_prune(self, partial: Sequence[float]) -> bool:
        """Whether the offset-corrected mean so far plus its lower confidence term
        ``a_j − z·σ_j`` exceeds ``T``: the candidate misses the top k with confidence."""
        j = len(partial)
        if j == 0 or j > self.lower.size:
            return False
        estimate = float(np.mean(np.asarray(partial) - self.offsets[:j]))
        return estimate + float(self.lower[j - 1]) > self.threshold


PruneRule = FloorBound | SequentialTest


def floor_bound(nll: np.ndarray, top_k: int, margin: float) -> FloorBound:
    """The bound rule from the per-document NLLs (candidates × documents) of every completely
    scored candidate so far."""
    means = np.sort(nll.mean(axis=1))
    return FloorBound(threshold=float(means[top_k - 1]), floors=nll.min(axis=0) - margin)


def sequential_test(nll: np.ndarray, top_k: int, z: float) -> SequentialTest:
    """The sequential test from the same matrix, calibrated on its best candidates."""
    means = nll.mean(axis=1)
    order = np.argsort(means, kind="stable")
    parents = nll[order[: max(top_k, MIN_CALIBRATION)]]
    offsets = (parents - parents.mean(axis=1, keepdims=True)).mean(axis=0)
    lower = []
    for j in range(1, nll.shape[1]):
        estimate = (parents[:, :j] - offsets[:j]).mean(axis=1)
        error = parents.mean(axis=1) - estimate
        lower.append(error.mean() - z * error.std(ddof=1))
    return SequentialTest(threshold=float(means[order[top_k - 1]]), offsets=offsets,
                          lower=np.array(lower))


def prune_rule(evaluations: Iterable[Evaluation], top_k: int, rule: Rule = BOUND,
               margin: float = 0.02, z: float = 4.0) -> PruneRule | None:
    """The rule for the next generation, or None until enough candidates are fully scored."""
    done = [e.nll for e in evaluations if e.status == OK]
    if len(done) < (top_k if rule == BOUND else max(top_k, MIN_CALIBRATION)):
        return None
    nll = np.array(done)
    if rule == SEQUENTIAL:
        return sequential_test(nll, top_k, z)
    return floor_bound(nll, top_k, margin)


def minibatch_rounds(individuals: Sequence[Individual], evaluations: Mapping[str, Evaluation]
                     ) -> list[Evaluation]:
    """Each n consecutive minibatch steps of a descent (a round: every document once, each at
    one of the round's points) as one complete NLL vector, keyed by its last step. A descent on
    minibatches then lowers the bar as a descent on all the documents does."""
    steps = {i.key: i for i in individuals if evaluations[i.key].status == MINIBATCH}
    out = []
    for last in steps.values():
        count, chain = last.minibatch[1], [last]
        while len(chain) < count and chain[-1].parents and chain[-1].parents[0] in steps:
            chain.append(steps[chain[-1].parents[0]])
        if {step.minibatch[0] for step in chain} != set(range(count)):
            continue  # a descent's first steps, before a whole round
        nll = np.empty(sum(len(evaluations[step.key].nll) for step in chain))
        for step in chain:
            nll[step.minibatch[0]::count] = evaluations[step.key].nll
        out.append(Evaluation(f"round:{last.key}", tuple(nll), OK, nll.size))
    return out
