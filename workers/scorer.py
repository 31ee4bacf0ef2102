"""The GPU worker: a Ray actor that loads the model and documents once and scores candidates.

One actor per model replica (one GPU by default through ``num_gpus``; a model that fits no
single GPU spreads its layers over the actor's GPUs with ``device_map="auto"`` when the actor has
several, ``--gpus-per-worker 2``, see :func:`placement`; CPU when the cluster has no GPU). It
scores with the same :func:`~longrope_search.search.evaluator.score_batch` as an in-process run,
document by document, so a candidate's pruning rule stops it on whichever worker scores it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from longrope_search.errors import ConfigError
from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.evaluator import LocalEvaluator, load_job_model
from longrope_search.search.job import job_from_dict
from longrope_search.search.plan import plan_job
from longrope_search.search.trial import Evaluation, Individual

SPREADABLE = ("auto", "cuda")  # scoring.device values that may mean several GPUs


def check_placement(device: str, gpus_per_worker: float) -> None:
    """Refuse, before any worker starts, a spec device that cannot use the GPUs each worker
    is given: several GPUs are one model spread over them, which ``cpu`` or ``cuda:N`` deny."""
    if gpus_per_worker > 1 and device not in SPREADABLE:
        raise ConfigError("scoring.device", f"{device!r} puts the model on one device, but each "
                          f"worker gets {gpus_per_worker:g} GPUs", "use device: cuda (or auto) "
                          "to spread one model over a worker's GPUs, or --gpus-per-worker 1")


def placement(device: str, gpu_ids: list[Any]) -> tuple[str, str | None]:
    """``(device, device_map)`` for a worker that Ray gave ``gpu_ids``: a CPU-only replica when
    it has none (even on a node with GPUs for others), the layers spread over them when it has
    several (whatever ``device`` says among ``auto`` and ``cuda``)."""
    if device == "auto" and not gpu_ids:
        return "cpu", None
    if len(gpu_ids) > 1:
        check_placement(device, len(gpu_ids))
        return device, "auto"
    return device, None


@ray.remote
class ScorerWorker:
    def __init__(self, spec: dict[str, Any]) -> None:
        job = job_from_dict(spec)
        device, device_map = placement(job.scoring.device, ray.get_gpu_ids())
        loaded = load_job_model(job, device=device, device_map=device_map)
        self.evaluator = LocalEvaluator(plan_job(job), loaded)
        self.scored = 0
        self.documents = 0
        self.busy_seconds = 0.0

    def pid(self) -> int:
        return os.getpid()

    def score(self, ind: Individual, cand: Candidate, rule: PruneRule | None) -> Evaluation:
        t0 = time.perf_counter()
        self.evaluator.submit(ind, cand, rule)
        ((_, ev),) = self.evaluator.wait()
        self.scored += 1
        self.documents += len(ev.nll)
        self.busy_seconds += time.perf_counter() - t0
        return ev

    def compare(self, best: Candidate) -> list[dict[str, Any]]:
        """The best candidate against PI, NTK and YaRN on the job's held-out documents."""
        return self.evaluator.compare(best)

    def throughput(self) -> dict[str, float]:
        """Candidates and documents scored, and candidates per busy second."""
        rate = self.scored / self.busy_seconds if self.busy_seconds else 0.0
        return {"worker": self.evaluator.worker, "candidates": self.scored,
                "documents": self.documents, "busy_seconds": self.busy_seconds,
                "candidates_per_second": rate}
