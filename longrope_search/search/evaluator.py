"""Score individuals one document at a time, stopping hopeless ones early.

The in-process evaluator; the Ray pool (``workers/``) offers the same ``evaluate`` call.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.evolution import FAILED, OK, PRUNED, Evaluation, Individual

OnResult = Callable[[Individual, Evaluation], None]


class Evaluator(Protocol):
    def evaluate(self, work: Sequence[tuple[Individual, Candidate]], rule: PruneRule | None,
                 on_result: OnResult) -> None:
        """Score every item; call ``on_result`` as each one finishes (pruned or failed too)."""


class LocalEvaluator:
    """Scores in this process with one :class:`PerplexityScorer`; candidates in a batch share
    each forward and leave the batch when pruned."""

    def __init__(self, scorer: PerplexityScorer) -> None:
        self.scorer = scorer
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def evaluate(self, work: Sequence[tuple[Individual, Candidate]], rule: PruneRule | None,
                 on_result: OnResult) -> None:
        n_docs = self.scorer.num_documents
        size = self.scorer.batch_size
        for start in range(0, len(work), size):
            active = list(work[start : start + size])
            nll: dict[str, list[float]] = {ind.key: [] for ind, _ in active}
            t0 = time.time()
            try:
                for d in range(n_docs):
                    scores, _ = self.scorer.score_document([c for _, c in active], d)
                    still = []
                    for (ind, cand), v in zip(active, scores, strict=True):
                        nll[ind.key].append(float(v))
                        if rule is not None and rule.should_prune(nll[ind.key]):
                            on_result(ind, self._result(ind, nll, PRUNED, t0))
                        else:
                            still.append((ind, cand))
                    active = still
                    if not active:
                        break
            except torch.OutOfMemoryError:
                for ind, _ in active:
                    on_result(ind, self._result(ind, nll, FAILED, t0))
                continue
            for ind, _ in active:
                on_result(ind, self._result(ind, nll, OK, t0))

    def _result(self, ind: Individual, nll: dict[str, list[float]], status: str,
                t0: float) -> Evaluation:
        now = time.time()
        return Evaluation(ind.key, tuple(nll[ind.key]), status, self.scorer.num_documents,
                          {"worker": self.worker, "seconds": round(now - t0, 4),
                           "timestamp": now})
