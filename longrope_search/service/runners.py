"""How the service runs a job: in this process (default), or on a pool of Ray scorer workers
(``serve --ray``).
Either way the one search driver runs it (stage by stage for a chained job), end-of-job steps
included."""

from __future__ import annotations

from longrope_search.search.run import run_job
from longrope_search.service.jobs import Job, Runner, progress_hook


def ray_runner(workers: int | None = None, *, gpus_per_worker: float | None = None,
               address: str | None = None) -> Runner:
    """Each job gets its own ``workers`` scorer actors (default: one per GPU), released when it
    ends; a job waiting for GPUs another job holds waits in Ray's scheduler. A pool bigger than
    the cluster fails the job at once (``serve`` refuses it before serving)."""

    def run(job: Job) -> None:
        import ray  # loaded by the first Ray job: a server running in-process never loads it

        from longrope_search.distributed import connect, pool_size, ray_evaluators

        connect(address)
        size, gpus, _ = pool_size(workers, gpus_per_worker, ray.cluster_resources())
        run_job(job.spec, evaluators=ray_evaluators(size, gpus_per_worker=gpus),
                progress=False, on_progress=progress_hook(job))

    return run


def local_runner() -> Runner:
    """Score in the server's own process (no Ray): the default, every listener on loopback."""

    def run(job: Job) -> None:
        run_job(job.spec, progress=False, on_progress=progress_hook(job))

    return run
