"""How the service runs a job: on a pool of Ray scorer workers (default) or in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longrope_search.io import write_json
from longrope_search.search.runner import run_search
from longrope_search.service.jobs import Job, Runner, progress_hook


def _comparison_documents(job: Job) -> Path:
    """Held-out documents when the job names them, else its search documents."""
    return job.spec.heldout_path or job.spec.documents_path


def _save_comparison(job: Job, docs: Path, rows: list[dict[str, Any]]) -> None:
    """The best factors against PI, NTK and YaRN, as ``longrope-search run`` writes it."""
    write_json(job.dir / "comparison.json", {"documents": str(docs), "rows": rows})


def ray_runner(workers: int = 1, *, gpus_per_worker: float | None = None,
               address: str | None = None) -> Runner:
    """Each job gets its own ``workers`` scorer actors, released when it ends; a job waiting
    for GPUs another job holds waits in Ray's scheduler."""

    def run(job: Job) -> None:
        import ray

        from longrope_search.distributed import RayEvaluator, connect

        connect(address)
        gpus = gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
        pool = RayEvaluator(job.spec, workers, gpus_per_worker=gpus)
        try:
            result = run_search(job.spec, evaluator=pool, progress=False,
                                on_progress=progress_hook(job))
            docs = _comparison_documents(job)
            _save_comparison(job, docs, ray.get(pool.workers[0].compare.remote(result.best,
                                                                              str(docs))))
        finally:
            pool.shutdown()

    return run


def local_runner() -> Runner:
    """Score in the server's own process (no Ray): for a laptop, or tests of the API alone."""

    def run(job: Job) -> None:
        from longrope_search.model import load_model
        from longrope_search.search.runner import compare_on_documents, plan_job

        spec = job.spec
        loaded = load_model(spec.model_path, dtype=spec.scoring.dtype,
                            device=spec.scoring.device, trust_remote_code=spec.trust_remote_code)
        result = run_search(spec, loaded=loaded, progress=False, on_progress=progress_hook(job))
        docs = _comparison_documents(job)
        _save_comparison(job, docs, compare_on_documents(spec, plan_job(spec), loaded,
                                                         result.best, docs))

    return run
