"""The search on a real local Ray cluster (logical GPUs): same result as in-process, a killed
worker costs nothing, a killed coordinator resumes."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from longrope_search.distributed import RayEvaluator
from longrope_search.search.runner import run_search
from tests.test_search_run import ledger_keys, spec

ROOT = Path(__file__).resolve().parents[1]
FP32 = {"scoring": {"dtype": "float32"}}  # the `embedded` fixture's dtype, for the reference


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded):
    return run_search(spec(tmp_path_factory.mktemp("ref"), name="job", **FP32), loaded=embedded,
                      progress=False)


def same_best(a, b) -> None:
    assert np.array_equal(a.best.lambdas, b.best.lambdas) and a.best.n_hat == b.best.n_hat
    # workers run with fewer threads than this process: float sums may differ in the last bits
    assert a.best_evaluation.nll == pytest.approx(b.best_evaluation.nll, rel=1e-6)


def test_two_workers_give_the_in_process_result(cluster, reference, tmp_path: Path) -> None:
    s = spec(tmp_path, name="job", **FP32)
    pool = RayEvaluator(s, 2, gpus_per_worker=1)
    result = run_search(s, evaluator=pool, progress=False)
    keys = ledger_keys(s.job_dir, "job")
    assert len(keys) == len(set(keys)) == s.evolution.budget
    same_best(result, reference)
    report = pool.throughput()
    assert len({r["worker"] for r in report}) == 2 and all(r["candidates"] > 0 for r in report)
    pool.shutdown()


def test_killed_worker_loses_no_candidate(cluster, reference, tmp_path: Path) -> None:
    s = spec(tmp_path, name="job", **FP32)
    pool = RayEvaluator(s, 2, gpus_per_worker=1)
    victim = pool.pids()[0]
    killed = threading.Event()

    def kill_mid_run() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            path = s.job_dir / "ledger.journal"
            if path.exists() and len(ledger_keys(s.job_dir, "job")) >= 12:
                os.kill(victim, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.05)

    threading.Thread(target=kill_mid_run, daemon=True).start()
    result = run_search(s, evaluator=pool, progress=False)
    assert killed.is_set()
    keys = ledger_keys(s.job_dir, "job")
    assert len(keys) == len(set(keys)) == s.evolution.budget  # each candidate exactly once
    assert victim not in pool.pids()  # the worker was restarted as a new process
    same_best(result, reference)
    pool.shutdown()


def test_killed_coordinator_resumes_to_the_same_result(cluster, reference,
                                                       tmp_path: Path) -> None:
    s = spec(tmp_path, name="job", **FP32)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(dataclasses.asdict(s)))
    env = {**os.environ, "RAY_ADDRESS": cluster, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "run", str(config),
                             "--ray", "--workers", "2", "--gpus-per-worker", "1",
                             "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (s.job_dir / "ledger.journal").exists() and len(ledger_keys(s.job_dir, "job")) >= 14:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(ledger_keys(s.job_dir, "job"))
    assert 14 <= before < s.evolution.budget

    pool = RayEvaluator(s, 2, gpus_per_worker=1)
    result = run_search(s, evaluator=pool, progress=False)
    keys = ledger_keys(s.job_dir, "job")
    assert len(keys) == len(set(keys)) == s.evolution.budget
    assert result.reused == before
    same_best(result, reference)
    pool.shutdown()


def test_service_runs_jobs_on_ray_workers(cluster, reference, tmp_path: Path) -> None:
    import json

    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import ray_runner

    manager = JobManager(tmp_path, ray_runner(2, gpus_per_worker=1))
    try:
        manager.submit(spec(tmp_path, name="job", **FP32).to_dict())
        job = manager.wait("job", timeout=300)
        assert job.state == "finished", job.error
        assert job.progress["evaluations"] == job.spec.evolution.budget
    finally:
        manager.close()
    best = json.loads((tmp_path / "job" / "best.json").read_text())
    assert best["lambdas"] == pytest.approx(reference.best.lambdas.tolist())
    assert best["search_ppl"] == pytest.approx(reference.best_evaluation.ppl, rel=1e-6)
    held = json.loads((tmp_path / "job" / "comparison.json").read_text())["rows"]
    assert held[0]["method"] == "best" and held[0]["ppl"] > 0
    keys = ledger_keys(tmp_path / "job", "job")
    assert len(keys) == len(set(keys)) == job.spec.evolution.budget


def fake_worker(task_seconds: float = 0.0, kills: frozenset[str] = frozenset(),
                broken: bool = False):
    """A scorer actor without a model: sleeps ``task_seconds`` per candidate, dies (the whole
    process) while scoring the candidates in ``kills``, or fails in its constructor if
    ``broken``. Defined in a function so that Ray ships it by value."""
    from longrope_search.search.evolution import OK, Evaluation

    class FakeWorker:
        def __init__(self, spec: dict) -> None:
            if broken:
                raise RuntimeError("no such model")

        def pid(self) -> int:
            return os.getpid()

        def score(self, ind, cand, rule):
            start = time.time()
            time.sleep(task_seconds)  # dying at once could lose the previous task's reply
            if ind.key in kills:
                os._exit(1)
            return Evaluation(ind.key, (1.0,), OK, 1, {"start": start, "end": time.time()})

        def throughput(self) -> dict:
            return {}

    return ray.remote(FakeWorker)


def individuals(n: int) -> list:
    from longrope_search.search.evolution import Individual
    from longrope_search.search.space import Genome

    return [(Individual(Genome(np.arange(4) + i, 0), 0, "mutation"), None) for i in range(n)]


def test_a_candidate_that_kills_workers_is_failed_without_charging_others(cluster,
                                                                          tmp_path) -> None:
    work = individuals(12)
    killer = work[3][0].key  # the second task sent to worker 1: queued, then running
    pool = RayEvaluator(spec(tmp_path), 2, gpus_per_worker=0, cpus_per_worker=0.01,
                        worker_cls=fake_worker(0.05, frozenset({killer})))
    seen = []
    pool.evaluate(work, None, lambda ind, ev: seen.append(ev))
    assert sorted(e.key for e in seen) == sorted(ind.key for ind, _ in work)  # each once
    assert {e.key: e.status for e in seen if e.status != "ok"} == {killer: "failed"}
    assert pool.failures == {killer: pool.max_tries}  # nothing queued behind it was charged
    pool.shutdown()


def test_workers_never_wait_for_the_ledger(cluster, tmp_path) -> None:
    """A slow ``on_result`` (a ledger append with fsync on a slow disk) does not idle workers:
    each one has its next candidate before the coordinator records the last one."""
    pool = RayEvaluator(spec(tmp_path), 1, gpus_per_worker=0, cpus_per_worker=0.01,
                        worker_cls=fake_worker(0.3))
    seen = []
    pool.evaluate(individuals(8), None, lambda ind, ev: (seen.append(ev), time.sleep(0.2)))
    runs = sorted((e.extra["start"], e.extra["end"]) for e in seen)
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(runs)]
    assert len(seen) == 8 and max(gaps) < 0.1, gaps  # unpipelined, each gap would be ≥ 0.2 s
    pool.shutdown()


def test_workers_that_cannot_start_raise_instead_of_hanging(cluster, tmp_path) -> None:
    pool = RayEvaluator(spec(tmp_path), 2, gpus_per_worker=0, cpus_per_worker=0.01,
                        worker_cls=fake_worker(broken=True))
    with pytest.raises(RuntimeError, match="no such model"):
        pool.evaluate(individuals(3), None, lambda ind, ev: None)
    assert not pool.failures  # a worker that never started is no candidate's fault
    pool.shutdown()
