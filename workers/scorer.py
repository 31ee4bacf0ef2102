"""The GPU worker: a Ray actor that loads the model and documents once and scores candidates.

One actor per model replica (one GPU by default through ``num_gpus``; a model that fits no
single GPU spreads its layers over the actor's GPUs with ``device_map="auto"`` when the actor has
several, ``--gpus-per-worker 2``; CPU when the cluster has no GPU). It scores with the same
:func:`~longrope_search.search.evaluator.score_batch` as an in-process run, document by
document, so a candidate's pruning rule stops it on whichever worker scores it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray

from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.trial import Evaluation, Individual


@ray.remote
class ScorerWorker:
    def __init__(self, spec: dict[str, Any]) -> None:
        from longrope_search.model import load_model
        from longrope_search.search.evaluator import LocalEvaluator
        from longrope_search.search.job import job_from_dict
        from longrope_search.search.plan import plan_job

        job = job_from_dict(spec)
        device, device_map = job.scoring.device, None
        gpus = ray.get_gpu_ids()
        if device == "auto" and not gpus:
            device = "cpu"  # a CPU-only replica even when the node has GPUs for others
        elif device == "auto" and len(gpus) > 1:
            device_map = "auto"  # a model too big for one GPU: layers spread over this actor's
        loaded = load_model(job.model_path, dtype=job.scoring.dtype, device=device,
                            device_map=device_map, trust_remote_code=job.trust_remote_code)
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

    def compare(self, best: Candidate, documents: str) -> list[dict[str, Any]]:
        """The best candidate against PI, NTK and YaRN on other documents (held-out)."""
        return self.evaluator.compare(best, Path(documents))

    def throughput(self) -> dict[str, float]:
        """Candidates and documents scored, and candidates per busy second."""
        rate = self.scored / self.busy_seconds if self.busy_seconds else 0.0
        return {"worker": self.evaluator.worker, "candidates": self.scored,
                "documents": self.documents, "busy_seconds": self.busy_seconds,
                "candidates_per_second": rate}
