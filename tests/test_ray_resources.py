"""A Ray pool that the cluster cannot hold: refused before the job starts (CLI and service),
sized by default to the cluster's GPUs, and, made anyway, scored by the workers Ray could
place instead of hanging on those it could not."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import yaml

from longrope_search.distributed import RayEvaluator, check_resources, pool_size, unplaceable
from longrope_search.errors import ConfigError
from tests.test_ray import FP32, evaluate_all, fake_worker, individuals
from tests.test_ray import cluster as cluster  # the module's Ray cluster: 4 CPUs, 2 GPUs
from tests.test_search_run import spec

CLUSTER = {"CPU": 4.0, "GPU": 2.0}  # what the `cluster` fixture has


class Stop(Exception):
    """Raised where the job would load weights or start serving: far enough."""


def finishes(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``fn()`` in a thread, failed (not hung) when it is still running after ``timeout``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout:g} s: it hangs"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- the check and the default, no Ray -----------------------------------------------------------
def test_a_pool_bigger_than_the_cluster_names_workers_both_numbers_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        check_resources(4, 1.0, 1.0, {"GPU": 2.0, "CPU": 16.0})
    assert err.value.field == "workers"
    assert err.value.problem == "4 workers × 1 GPU need 4 GPUs; the Ray cluster has 2"
    assert err.value.fix == "use --workers 2 or fewer, or --gpus-per-worker 0.5"


@pytest.mark.parametrize(("workers", "gpus", "cpus", "resources", "problem", "fix"), [
    (3, 0.6, 1.0, {"GPU": 2.0, "CPU": 8.0}, "3 workers × 0.6 GPU do not fit the Ray cluster's "
     "2 GPUs: Ray never splits a worker's share across two GPUs, so they hold 2 such workers",
     "--gpus-per-worker 0.5"),
    (2, 2.0, 1.0, {"GPU": 3.0, "CPU": 8.0}, "2 workers × 2 GPUs need 4 GPUs; the Ray cluster "
     "has 3", "use --workers 1 or fewer, or --gpus-per-worker 1"),
    (1, 1.0, 1.0, {"CPU": 8.0}, "1 worker × 1 GPU needs 1 GPU; the Ray cluster has 0",
     "--gpus-per-worker 0 (score on CPUs)"),
    (8, 0.0, 1.0, {"CPU": 4.0}, "8 workers × 1 CPU need 8 CPUs; the Ray cluster has 4",
     "use --workers 4 or fewer"),
])
def test_what_does_not_fit(workers: int, gpus: float, cpus: float, resources: dict,
                           problem: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_resources(workers, gpus, cpus, resources)
    assert err.value.field == "workers" and err.value.problem == problem
    assert fix in err.value.fix


@pytest.mark.parametrize(("workers", "gpus"), [(2, 1.0), (4, 0.5), (1, 2.0), (4, 0.0)])
def test_what_fits(workers: int, gpus: float) -> None:
    check_resources(workers, gpus, 1.0, CLUSTER)


@pytest.mark.parametrize(("workers", "gpus", "resources", "expected"), [
    (None, None, {"GPU": 8.0, "CPU": 64.0},
     (8, 1.0, "ray: 8 workers, 1 GPU each (8 GPUs in the cluster)")),
    (None, None, {"CPU": 8.0}, (1, 0.0, "ray: 1 worker on CPUs (0 GPUs in the cluster)")),
    (None, 0.5, {"GPU": 2.0, "CPU": 8.0},
     (4, 0.5, "ray: 4 workers, 0.5 GPU each (2 GPUs in the cluster)")),
    (None, 2.0, {"GPU": 8.0, "CPU": 3.0},  # the CPUs hold fewer workers than the GPUs
     (3, 2.0, "ray: 3 workers, 2 GPUs each (8 GPUs in the cluster)")),
    (None, 0.0, {"GPU": 8.0, "CPU": 8.0}, (1, 0.0, "ray: 1 worker on CPUs (8 GPUs in the "
                                                   "cluster)")),
    (2, None, CLUSTER, (2, 1.0, "ray: 2 workers, 1 GPU each (2 GPUs in the cluster)")),
])
def test_the_default_pool_is_one_worker_per_gpu(workers: int | None, gpus: float | None,
                                                resources: dict, expected: tuple) -> None:
    assert pool_size(workers, gpus, resources) == expected


def test_the_default_gpus_per_worker_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="3 workers × 1 GPU need 3 GPUs; the Ray cluster has 2"):
        pool_size(3, None, CLUSTER)


def test_what_ray_lacks_to_place_a_worker() -> None:
    assert unplaceable({"GPU": 1.0, "CPU": 1.0}, [CLUSTER]) is None
    assert unplaceable({"GPU": 2.0, "CPU": 0.0}, [{"GPU": 1.0}, {"GPU": 1.0}]) == (
        "Ray lacks what a worker asks for (2 GPU): no node has that much (the most on one of "
        "the cluster's 2 nodes: 1 GPU)")
    assert "3 GPU" in unplaceable({"GPU": 3.0, "CPU": 1.0}, [CLUSTER])


# -- pools made anyway (bypassing the check) -----------------------------------------------------
def test_more_workers_than_gpus_do_every_evaluation_on_the_ones_ray_placed(cluster,
                                                                           tmp_path) -> None:
    pool = RayEvaluator(spec(tmp_path), 3, gpus_per_worker=1, cpus_per_worker=0.01,
                        worker_cls=fake_worker(0.05))
    seen: list = []
    try:
        finishes(lambda: evaluate_all(pool, individuals(8), lambda ind, ev: seen.append(ev)))
    finally:
        pool.shutdown()
    assert sorted(e.key for e in seen) == sorted(ind.key for ind, _ in individuals(8))
    assert len({e.extra["pid"] for e in seen}) == 2  # the third worker was never placed


def test_a_worker_that_starts_late_joins_the_others(cluster, tmp_path) -> None:
    blocker = ray.remote(num_gpus=1, num_cpus=0.01)(Holder).remote()
    ray.get(blocker.ping.remote())  # holds one of the two GPUs: the pool's 2nd worker waits
    pool = RayEvaluator(spec(tmp_path), 2, gpus_per_worker=1, cpus_per_worker=0.01,
                        worker_cls=fake_worker(0.05))
    seen: list = []

    def free_the_gpu_after_three(ind, ev) -> None:
        seen.append(ev)
        if len(seen) == 3:
            ray.kill(blocker)
            ray.get(pool.workers[1].pid.remote(), timeout=60)  # the late worker is up

    try:
        finishes(lambda: evaluate_all(pool, individuals(16), free_the_gpu_after_three))
    finally:
        pool.shutdown()
    assert len(seen) == 16
    assert len({e.extra["pid"] for e in seen[:3]}) == 1  # the others did not wait for it
    assert len({e.extra["pid"] for e in seen}) == 2  # and it got work once it started


class Holder:
    def ping(self) -> bool:
        return True


def test_workers_ray_cannot_place_raise_within_the_start_time(cluster,
                                                              tmp_path) -> None:
    pool = RayEvaluator(spec(tmp_path), 2, gpus_per_worker=3, cpus_per_worker=0.01,
                        worker_cls=fake_worker(), start_timeout_s=1)
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as err:
            finishes(lambda: evaluate_all(pool, individuals(3)), timeout=30)
    finally:
        pool.shutdown()
    assert time.monotonic() - t0 < 20
    assert str(err.value).startswith("0 of 2 Ray workers started within 1 s: Ray lacks what a "
                                     "worker asks for (3 GPU, 0.01 CPU)")
    assert "2 GPU" in str(err.value)  # what the cluster has


def test_workers_waiting_for_gpus_other_jobs_hold_warn_and_wait(cluster, tmp_path,
                                                                caplog) -> None:
    """Past the start time, workers Ray can place but has not (another job's workers hold the
    GPUs, as with `serve --max-running 2`) are waited for, as Ray's scheduler does."""
    blocker = ray.remote(num_gpus=2, num_cpus=0.01)(Holder).remote()
    ray.get(blocker.ping.remote())
    pool = RayEvaluator(spec(tmp_path), 1, gpus_per_worker=1, cpus_per_worker=0.01,
                        worker_cls=fake_worker(), start_timeout_s=0.5)
    seen: list = []
    thread = threading.Thread(target=evaluate_all, daemon=True,
                              args=(pool, individuals(4), lambda ind, ev: seen.append(ev)))
    try:
        with caplog.at_level(logging.WARNING, logger="longrope_search.distributed"):
            thread.start()
            deadline = time.monotonic() + 20
            while "0 of 1 Ray workers started" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "Ray can place a worker" in caplog.text
            ray.kill(blocker)
            thread.join(30)
        assert not thread.is_alive() and len(seen) == 4
    finally:
        pool.shutdown()


# -- the CLI and the service refuse before anything loads ----------------------------------------
def config(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, name="job", **FP32).to_dict()))
    return path


@pytest.fixture
def no_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` stops where it would load weights and start workers: a Ray pool is sized (or
    refused) when the job opens its first one, after its checks."""

    def run_job(*args: Any, evaluators: Any = None, **kwargs: Any) -> None:
        if evaluators is not None:
            evaluators(None)  # sizes the pool; entering it would start the workers
        raise Stop

    monkeypatch.setattr("longrope_search.search.run.run_job", run_job)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` stops where it would start serving."""
    import uvicorn

    def run(*args: Any, **kwargs: Any) -> None:
        raise Stop

    monkeypatch.setattr(uvicorn, "run", run)


def test_run_refuses_more_workers_than_gpus(cluster, no_job, tmp_path,
                                            capsys) -> None:
    from longrope_search.cli import main

    assert main(["run", str(config(tmp_path)), "--ray", "--workers", "3", "--gpus-per-worker",
                 "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: workers: 3 workers × 1 GPU need 3 GPUs; the Ray cluster has 2. Fix: use " \
           "--workers 2 or fewer" in err


def test_run_defaults_to_one_worker_per_gpu(cluster, no_job, tmp_path,
                                            capsys) -> None:
    from longrope_search.cli import main

    with pytest.raises(Stop):
        main(["run", str(config(tmp_path)), "--ray", "--no-progress"])
    assert "ray: 2 workers, 1 GPU each (2 GPUs in the cluster)" in capsys.readouterr().err


def test_serve_refuses_more_workers_than_gpus_before_serving(cluster, no_server,
                                                             tmp_path, capsys) -> None:
    from longrope_search.cli import main

    assert main(["serve", "--ray", "--workers", "3", "--gpus-per-worker", "1",
                 "--results-dir", str(tmp_path)]) == 2
    assert "error: workers: 3 workers × 1 GPU need 3 GPUs" in capsys.readouterr().err


def test_serve_defaults_to_one_worker_per_gpu(cluster, no_server, tmp_path,
                                              capsys) -> None:
    from longrope_search.cli import main

    with pytest.raises(Stop):
        main(["serve", "--ray", "--results-dir", str(tmp_path)])
    assert "ray: 2 workers, 1 GPU each (2 GPUs in the cluster)" in capsys.readouterr().err


def test_a_service_job_on_a_pool_bigger_than_the_cluster_fails_at_once(cluster) -> None:
    from longrope_search.service.runners import ray_runner

    with pytest.raises(ConfigError, match="3 workers × 1 GPU need 3 GPUs"):
        finishes(lambda: ray_runner(3, gpus_per_worker=1)(SimpleNamespace(spec=None)))


def test_serve_refuses_a_job_whose_device_denies_the_workers_gpus(cluster, monkeypatch,
                                                                 tmp_path) -> None:
    """`serve --ray --gpus-per-worker 2`: a job with device cpu gets 422 naming scoring.device
    at submit, before anything is written; device cuda is accepted."""
    import uvicorn
    from fastapi.testclient import TestClient

    from longrope_search.cli import main

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    assert main(["serve", "--ray", "--workers", "1", "--gpus-per-worker", "2",
                 "--results-dir", str(tmp_path / "runs")]) == 0
    client = TestClient(apps[0])
    job = {"name": "cpu-job", "extension_ratio": 4, "k_documents": 2,
           "scoring": {"device": "cpu"}}
    r = client.post("/api/jobs", json=job)
    assert r.status_code == 422 and r.json()["field"] == "scoring.device", r.text
    assert not (tmp_path / "runs" / "cpu-job").exists()
