"""How the service runs a job: on a pool of Ray scorer workers (default) or in this process.
Either way the one search driver runs it (stage by stage for a chained job), end-of-job steps
included."""

from __future__ import annotations

from longrope_search.search.chain import run_job
from longrope_search.service.jobs import Job, Runner, progress_hook


def ray_runner(workers: int = 1, *, gpus_per_worker: float | None = None,
               address: str | None = None) -> Runner:
    """Each job gets its own ``workers`` scorer actors, released when it ends; a job waiting
    for GPUs another job holds waits in Ray's scheduler."""

    def run(job: Job) -> None:
        import ray

        from longrope_search.distributed import connect, ray_evaluators

        connect(address)
        gpus = gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
        run_job(job.spec, evaluators=ray_evaluators(workers, gpus_per_worker=gpus),
                progress=False, on_progress=progress_hook(job))

    return run


def local_runner() -> Runner:
    """Score in the server's own process (no Ray): for a laptop, or tests of the API alone."""

    def run(job: Job) -> None:
        run_job(job.spec, progress=False, on_progress=progress_hook(job))

    return run
