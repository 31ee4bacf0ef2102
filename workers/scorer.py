"""The GPU worker: a Ray actor that loads the model and documents once and scores candidates.

One actor per model replica (one GPU by default through ``num_gpus``; a model that fits no
single GPU spreads its layers over the actor's GPUs with ``device_map="auto"`` when the actor has
several, ``--gpus-per-worker 2``; CPU when the cluster has no GPU). It scores with the same
:class:`~longrope_search.search.evaluator.LocalEvaluator` as an in-process run, document by
document, so the generation's pruning rule stops a hopeless candidate on whichever worker scores
it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import ray

from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule
from longrope_search.search.evolution import Evaluation, Individual


@ray.remote
class ScorerWorker:
    def __init__(self, spec: dict[str, Any]) -> None:
        from longrope_search.model import load_model
        from longrope_search.search.evaluator import LocalEvaluator
        from longrope_search.search.job import job_from_dict
        from longrope_search.search.runner import plan_job, scorer_for

        job = job_from_dict(spec)
        plan = plan_job(job)
        device, device_map = job.scoring.device, None
        gpus = ray.get_gpu_ids()
        if device == "auto" and not gpus:
            device = "cpu"  # a CPU-only replica even when the node has GPUs for others
        elif device == "auto" and len(gpus) > 1:
            device_map = "auto"  # a model too big for one GPU: layers spread over this actor's
        loaded = load_model(job.model_path, dtype=job.scoring.dtype, device=device,
                            device_map=device_map, trust_remote_code=job.trust_remote_code)
        self.job, self.plan, self.loaded = job, plan, loaded
        self.evaluator = LocalEvaluator(scorer_for(job, plan, loaded))
        self.evaluator.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.scored = 0
        self.documents = 0
        self.busy_seconds = 0.0

    def pid(self) -> int:
        return os.getpid()

    def score(self, ind: Individual, cand: Candidate, rule: PruneRule | None) -> Evaluation:
        t0 = time.perf_counter()
        out: list[Evaluation] = []
        self.evaluator.evaluate([(ind, cand)], rule, lambda _i, e: out.append(e))
        self.scored += 1
        self.documents += len(out[0].nll)
        self.busy_seconds += time.perf_counter() - t0
        return out[0]

    def compare(self, best: Candidate, documents: str) -> list[dict[str, Any]]:
        """The best candidate against PI, NTK and YaRN on other documents (held-out)."""
        from pathlib import Path

        from longrope_search.search.runner import compare_on_documents

        return compare_on_documents(self.job, self.plan, self.loaded, best, Path(documents))

    def throughput(self) -> dict[str, float]:
        """Candidates and documents scored, and candidates per busy second."""
        rate = self.scored / self.busy_seconds if self.busy_seconds else 0.0
        return {"worker": self.evaluator.worker, "candidates": self.scored,
                "documents": self.documents, "busy_seconds": self.busy_seconds,
                "candidates_per_second": rate}
