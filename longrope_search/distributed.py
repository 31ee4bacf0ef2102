"""Search on Ray: the coordinator hands candidates to a pool of scorer actors.

Each candidate goes to the next free worker (``ray.wait``, no barrier inside a generation). A
worker that dies mid-evaluation (killed process, CUDA out-of-memory, lost node) is restarted by
Ray and its candidate goes back to the queue for another worker; a candidate that kills workers
``max_tries`` times is recorded as failed. The coordinator itself keeps no state that the
ledger does not: kill it and run the job again, and it resumes where the ledger ends.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.evaluator import OnResult
from longrope_search.search.evolution import FAILED, Evaluation, Individual
from longrope_search.search.job import JobSpec


def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Ray ≥ 2.59 turns token authentication on for local clusters; a client of a remote cluster
    needs its token in ``RAY_AUTH_TOKEN`` or the file from ``ray get-auth-token``.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             **({} if address else init_kwargs))


class RayEvaluator:
    """The :class:`~longrope_search.search.evaluator.Evaluator` of a pool of Ray workers."""

    def __init__(self, spec: JobSpec, num_workers: int, *, gpus_per_worker: float = 1.0,
                 cpus_per_worker: float = 1.0, max_tries: int = 3,
                 worker_options: dict[str, Any] | None = None) -> None:
        from workers.scorer import ScorerWorker

        spec_dict = dataclasses.asdict(spec)
        options = {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker,
                   "max_restarts": -1, "max_task_retries": 0, **(worker_options or {})}
        self.workers = [ScorerWorker.options(**options).remote(spec_dict)
                        for _ in range(num_workers)]
        self.max_tries = max_tries
        self.failures: dict[str, int] = {}
        self.recovering: dict[ray.ObjectRef, Any] = {}

    def pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def throughput(self) -> list[dict[str, float]]:
        return ray.get([w.throughput.remote() for w in self.workers])

    def evaluate(self, work: Sequence[tuple[Individual, Candidate]], rule: PruneRule | None,
                 on_result: OnResult) -> None:
        queue = deque(work)
        recovering = self.recovering  # ping → worker that failed a task; kept across calls
        free = deque(w for w in self.workers if w not in recovering.values())
        running: dict[ray.ObjectRef, tuple[Any, tuple[Individual, Candidate]]] = {}
        while queue or running:
            while queue and free:
                worker, item = free.popleft(), queue.popleft()
                running[worker.score.remote(item[0], item[1], rule)] = (worker, item)
            (ref,), _ = ray.wait([*running, *recovering], num_returns=1)
            if ref in recovering:  # a restarted worker answers again: give it work
                worker = recovering.pop(ref)
                try:
                    ray.get(ref)
                    free.append(worker)
                except RayActorError:
                    recovering[worker.pid.remote()] = worker
                continue
            worker, item = running.pop(ref)
            try:
                on_result(item[0], ray.get(ref))
                free.append(worker)
            except (RayActorError, RayTaskError) as err:
                recovering[worker.pid.remote()] = worker
                key = item[0].key
                self.failures[key] = self.failures.get(key, 0) + 1
                if self.failures[key] >= self.max_tries:
                    on_result(item[0], Evaluation(key, (), FAILED, 0,
                                                  {"error": type(err).__name__}))
                else:
                    queue.appendleft(item)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
