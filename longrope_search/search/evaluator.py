"""Evaluators score candidates for the driver: in this process, or on a Ray pool
(:class:`longrope_search.distributed.RayEvaluator`), behind one asynchronous interface.

The driver submits a candidate whenever ``free_slots()`` says the evaluator can take one, and
``wait()`` blocks until at least one result is back. Each candidate is scored one document at
a time, so its pruning rule (fixed when its generation started) can stop it early; its cost is
the forward tokens it actually spent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch

from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import Scorer
from longrope_search.model import LoadedModel, load_model
from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.fitness import scorer_for
from longrope_search.search.job import JobSpec
from longrope_search.search.outcome import compare_on_documents
from longrope_search.search.plan import Plan
from longrope_search.search.trial import (
    ALL_DOCUMENTS,
    FAILED,
    GRADIENT,
    MINIBATCH,
    OK,
    PRUNED,
    SCORE,
    Evaluation,
    Individual,
)

Work = tuple[Individual, Candidate, PruneRule | None]
Finished = list[tuple[Individual, Evaluation]]


class Evaluator(Protocol):
    def free_slots(self) -> int:
        """How many more candidates it takes now without queueing behind busy scorers."""

    def submit(self, individual: Individual, candidate: Candidate,
               rule: PruneRule | None) -> None:
        """Queue one candidate for scoring."""

    def pending(self) -> int:
        """Candidates submitted and not yet returned by ``wait``."""

    def wait(self) -> Finished:
        """Block until at least one submitted candidate is done (pruned or failed too)."""

    def cancel(self) -> None:
        """Forget every candidate submitted and not yet returned (the search stopped)."""

    def compare(self, best: Candidate) -> list[dict[str, Any]]:
        """The best candidate against PI, NTK and YaRN on the plan's held-out documents."""


def release_memory() -> None:
    """Give the memory of a forward that ran out back to the device before the next try."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def oom_message(err: torch.OutOfMemoryError) -> str:
    """The ledger's record of an out-of-memory failure: the error's first line."""
    return f"OutOfMemoryError: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


def score_batch(scorer: Scorer, work: Sequence[Work], worker: str) -> Finished:
    """Score candidates that share each forward, document by document; a candidate leaves the
    batch when its rule prunes it.

    Out of memory with several candidates in a forward releases the memory and scores each
    remaining one alone; only a candidate that runs out of memory alone is failed, with the
    error in its record."""
    try:
        return _score_together(scorer, work, worker)
    except _OutOfMemory as oom:
        release_memory()
        if len(oom.remaining) == 1:  # it ran alone: one row per forward, nothing to split
            return [*oom.finished, _failed(oom.remaining[0][0], scorer, worker, oom.message)]
        return oom.finished + [r for w in oom.remaining for r in score_batch(scorer, [w], worker)]


class _OutOfMemory(Exception):
    """A batch ran out of memory: what had finished before, and the work still to score."""

    def __init__(self, finished: Finished, remaining: list[Work], message: str) -> None:
        super().__init__(message)
        self.finished, self.remaining, self.message = finished, remaining, message


def _failed(ind: Individual, scorer: Scorer, worker: str, error: str
            ) -> tuple[Individual, Evaluation]:
    return ind, Evaluation(ind.key, (), FAILED, scorer.num_documents,
                           extra={"worker": worker, "error": error})


def _score_together(scorer: Scorer, work: Sequence[Work], worker: str) -> Finished:
    nll: dict[int, list[float]] = {i: [] for i in range(len(work))}
    groups: dict[int, list[list[float]]] = {i: [] for i in range(len(work))}  # needles
    active = list(range(len(work)))
    out: Finished = []
    t0 = time.time()

    def result(i: int, status: str) -> tuple[Individual, Evaluation]:
        ind = work[i][0]
        cost = sum(scorer.forward_tokens[: len(nll[i])])
        now = time.time()
        extra = {"worker": worker, "seconds": round(now - t0, 4), "timestamp": now}
        if scorer.groups is not None:
            extra["needle_nll"] = groups[i]
        return ind, Evaluation(ind.key, tuple(nll[i]), status, scorer.num_documents, cost,
                               extra)

    for d in range(scorer.num_documents):
        try:
            per_group, count = scorer.score_groups([work[i][1] for i in active], d)
        except torch.OutOfMemoryError as err:
            raise _OutOfMemory(out, [work[i] for i in active], oom_message(err)) from None
        still = []
        for i, v in zip(active, per_group, strict=True):
            nll[i].append(float((v * count).sum() / count.sum()))
            groups[i].append(v.tolist())
            rule = work[i][2]
            if rule is not None and rule.should_prune(nll[i]):
                out.append(result(i, PRUNED))
            else:
                still.append(i)
        active = still
        if not active:
            break
    return out + [result(i, OK) for i in active]


def gradient_step(scorer: Scorer, ind: Individual, cand: Candidate, worker: str
                  ) -> tuple[Individual, Evaluation]:
    """Score on every document of the step's minibatch (all of them, unless it names one) and
    differentiate their mean NLL in λ (never pruned)."""
    t0 = time.time()
    scorer = scorer.minibatch(*ind.minibatch)
    try:
        g = gradient(scorer, cand)
    except torch.OutOfMemoryError as err:
        release_memory()
        return _failed(ind, scorer, worker, oom_message(err))
    now = time.time()
    status = OK if ind.minibatch == ALL_DOCUMENTS else MINIBATCH
    return ind, Evaluation(ind.key, tuple(float(v) for v in g.nll), status, scorer.num_documents,
                          g.forward_tokens, {"worker": worker, "seconds": round(now - t0, 4),
                                             "timestamp": now, "gradient": g.lambdas.tolist(),
                                             "step_forwards": round(g.step_forwards, 4)})


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LocalEvaluator:
    """Scores in this process with one :class:`PerplexityScorer`; up to ``batch_size``
    candidates share each forward."""

    def __init__(self, plan: Plan, loaded: LoadedModel) -> None:
        self.plan, self.loaded = plan, loaded
        self.scorer = scorer_for(plan, loaded)
        self.worker = worker_name()
        self.queue: list[Work] = []

    def free_slots(self) -> int:
        """How many more candidates fit the scorer's next batch."""
        return self.scorer.batch_size - len(self.queue)

    def submit(self, individual: Individual, candidate: Candidate,
               rule: PruneRule | None) -> None:
        """Queue a candidate for the next batch."""
        self.queue.append((individual, candidate, rule))

    def pending(self) -> int:
        """Candidates queued for the next batch."""
        return len(self.queue)

    def wait(self) -> Finished:
        """Score everything queued, one batch, document by document (pruning as each rule says)."""
        work, self.queue = self.queue, []
        scores = [w for w in work if w[0].task == SCORE]
        return score_batch(self.scorer, scores, self.worker) + [
            gradient_step(self.scorer, ind, cand, self.worker)
            for ind, cand, _ in work if ind.task == GRADIENT]

    def cancel(self) -> None:
        """Drop what is queued (nothing is running between two waits)."""
        self.queue = []

    def compare(self, best: Candidate) -> list[dict[str, Any]]:
        """``best`` against the unmodified model and the seeds, on the plan's held-out documents."""
        return compare_on_documents(self.plan, self.loaded, best)


# how a search gets an evaluator for a job's plan (one per stage of a chain), closed after it
Evaluators = Callable[[Plan], AbstractContextManager[Evaluator]]


def load_job_model(spec: JobSpec, *, device: str | None = None,
                   device_map: str | None = None) -> LoadedModel:
    """The job's model, loaded as its spec says (dtype, device, attention kernel, window);
    ``device`` and ``device_map`` override the spec's placement (a Ray worker's GPUs)."""
    sc = spec.scoring
    return load_model(spec.model_path, dtype=sc.dtype, device=device or sc.device,
                      device_map=device_map, attn_implementation=sc.attn_implementation,
                      remove_sliding_window=spec.remove_sliding_window,
                      trust_remote_code=spec.trust_remote_code)


def local_evaluators(loaded: LoadedModel | None = None) -> Evaluators:
    """Score in this process; the model is loaded once (on first use) for every stage."""
    models: list[LoadedModel] = [loaded] if loaded is not None else []

    @contextmanager
    def evaluator(plan: Plan) -> Iterator[Evaluator]:
        if not models:
            models.append(load_job_model(plan.spec))
        yield LocalEvaluator(plan, models[0])

    return evaluator
