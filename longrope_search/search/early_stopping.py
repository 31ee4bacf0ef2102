"""Stop scoring a candidate once its partial score shows it cannot enter the top-k.

Documents are scored in a fixed order. After j of n documents a candidate's final mean NLL is at
least ``(Σ_{d<j} nll_d + Σ_{d≥j} floor_d) / n``, where ``floor_d`` is the best NLL any candidate
has reached on document d so far, less a margin. When that bound exceeds the k-th best mean NLL,
the candidate cannot become a parent and is pruned.

Both the threshold and the floors are fixed when a generation starts, from earlier generations
only, so what is pruned never depends on the order in which candidates are evaluated (or on
which worker finished first). The margin is the one assumption: no new candidate beats the best
seen on a document by more than it; ``results/`` measures that the best candidate is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from longrope_search.search.evolution import OK, Evaluation


@dataclass(frozen=True)
class PruneRule:
    threshold: float  # k-th best mean NLL when the generation started
    floors: np.ndarray  # per-document optimistic NLL

    def should_prune(self, partial: Sequence[float]) -> bool:
        j, n = len(partial), self.floors.size
        if j >= n:
            return False
        return (float(np.sum(partial)) + float(self.floors[j:].sum())) / n > self.threshold


def prune_rule(evaluations: Iterable[Evaluation], top_k: int, margin: float
               ) -> PruneRule | None:
    """The rule for the next generation, or None until k candidates are fully scored."""
    done = [e for e in evaluations if e.status == OK]
    if len(done) < top_k:
        return None
    means = sorted(e.mean_nll for e in done)
    floors = np.min(np.array([e.nll for e in done]), axis=0) - margin
    return PruneRule(threshold=means[top_k - 1], floors=floors)
