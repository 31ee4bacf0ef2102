"""The search on a real local Ray cluster (logical GPUs): same result as in-process, a killed
worker costs nothing, a killed coordinator resumes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import yaml

from longrope_search.distributed import RayEvaluator
from longrope_search.search.run import run_search
from longrope_search.search.strategies import get_strategy
from tests.test_search_run import Cancel, cancel_after, ledger_keys, spec

ROOT = Path(__file__).resolve().parents[1]
FP32 = {"scoring": {"dtype": "float32"}}  # the `embedded` fixture's dtype, for the reference
STRATEGIES = ("evolution", "steady", "tpe", "cmaes", "random", "gradient", "memetic")


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
    assert len(keys) == len(set(keys)) == s.search.budget  # each candidate exactly once
    assert victim not in pool.pids()  # the worker was restarted as a new process
    same_best(result, reference)
    pool.shutdown()


def kill_mid_run(s, cluster: str, after: int) -> int:
    """Start ``longrope-search run --ray --workers 2`` and SIGKILL it once ``after``
    evaluations are in its ledger; return how many there are."""
    config = s.job_dir.parent / f"{s.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(s.to_dict()))
    env = {**os.environ, "RAY_ADDRESS": cluster, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "run", str(config),
                             "--ray", "--workers", "2", "--gpus-per-worker", "1",
                             "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a liveness bound: a loaded machine takes minutes
    while time.time() < deadline and proc.poll() is None:
        if (s.job_dir / "ledger.journal").exists() and len(ledger_keys(s.job_dir, s.name)) >= after:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(ledger_keys(s.job_dir, s.name))


# memetic again, its descents' steps on minibatches of the 3 documents (0 and 2, then 1)
OPTIONS = {"memetic-minibatches": ("memetic", {"minibatches": 2})}


@pytest.mark.parametrize("strategy", [*STRATEGIES, *OPTIONS])
def test_each_strategy_on_ray_reports_cancels_and_resumes(cluster, embedded, strategy: str,
                                                          tmp_path: Path) -> None:
    """A coordinator killed mid-search, resumed and cancelled, resumed again: every candidate
    scored once, progress reported, and (but for strategies whose asks follow the completion
    order: steady-state evolution, gradient descent, memetic) the same tables as in-process."""
    strategy, options = OPTIONS.get(strategy, (strategy, {}))
    s = spec(tmp_path / "ray", name="job", strategy=strategy, strategy_options=options, **FP32)
    before = kill_mid_run(s, cluster, after=14)
    assert 14 <= before < s.evaluation_budget

    pool = RayEvaluator(s, 2, gpus_per_worker=1)
    seen: list[dict] = []
    with pytest.raises(Cancel):
        run_search(s, evaluator=pool, progress=False, on_progress=cancel_after(3, seen))
    assert len(ledger_keys(s.job_dir, "job")) == before + 3  # stopped within one evaluation
    assert [p["evaluations"] for p in seen] == [0, 1, 2, 3]
    assert seen[-1]["cost_tokens"] > seen[0]["cost_tokens"] > 0

    result = run_search(s, evaluator=pool, progress=False)
    pool.shutdown()
    keys = ledger_keys(s.job_dir, "job")
    assert len(keys) == len(set(keys)) == len(read_tables(s).query("operator != 'parent'")
                                              .candidate_id.unique())
    assert result.reused == before + 3
    if options.get("minibatches"):  # the steps came back from the workers on their minibatch
        steps = read_tables(s).query("operator == 'gradient'")
        assert len(steps) and set(steps.status) == {"minibatch"}
        assert set(steps.documents_scored) == {1, 2}
    if get_strategy(strategy).order_dependent:  # its asks follow the completion order
        return
    local = run_search(spec(tmp_path / "local", name="job", strategy=strategy, **FP32),
                       loaded=embedded, progress=False)
    a, b = read_tables(s), pd.read_parquet(local.job_dir / "generations")
    exact = ["generation", "candidate_id", "operator", "parents", "n_hat", "status"]
    assert a[exact].astype(str).equals(b[exact].astype(str))
    # workers run with fewer threads than this process: float sums may differ in the last bits
    assert a.mean_nll.to_numpy() == pytest.approx(b.mean_nll.to_numpy(), rel=1e-6, nan_ok=True)


def read_tables(s) -> pd.DataFrame:
    return pd.read_parquet(s.job_dir / "generations")


def test_service_runs_jobs_on_ray_workers(cluster, reference, tmp_path: Path) -> None:
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import ray_runner

    manager = JobManager(tmp_path, ray_runner(2, gpus_per_worker=1))
    try:
        for strategy in STRATEGIES:
            manager.submit(spec(tmp_path, name=strategy, strategy=strategy, **FP32).to_dict())
        jobs = [manager.wait(strategy, timeout=300) for strategy in STRATEGIES]
        for job in jobs:
            assert job.state == "finished", job.error
            p = job.progress
            assert p["evaluations"] == len(set(ledger_keys(job.dir, job.name))) > 0
            assert p["strategy"] == job.name and p["cost_tokens"] > 0
    finally:
        manager.close()
    evolution = tmp_path / "evolution"
    best = json.loads((evolution / "best.json").read_text())
    assert best["lambdas"] == pytest.approx(reference.best.lambdas.tolist())
    assert best["search_ppl"] == pytest.approx(reference.best_evaluation.ppl, rel=1e-6)
    held = json.loads((evolution / "comparison.json").read_text())["rows"]
    assert held[0]["method"] == "best" and held[0]["ppl"] > 0
    keys = ledger_keys(evolution, "evolution")
    assert len(keys) == len(set(keys)) == jobs[0].spec.evaluation_budget


def fake_worker(task_seconds: float = 0.0, kills: frozenset[str] = frozenset(),
                broken: bool = False):
    """A scorer actor without a model: sleeps ``task_seconds`` per candidate, dies (the whole
    process) while scoring the candidates in ``kills``, or fails in its constructor if
    ``broken``. Defined in a function so that Ray ships it by value."""
    from longrope_search.search.trial import OK, Evaluation

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
            return Evaluation(ind.key, (1.0,), OK, 1, extra={"start": start, "end": time.time(),
                                                             "pid": os.getpid()})

        def throughput(self) -> dict:
            return {}

    return ray.remote(FakeWorker)


def individuals(n: int) -> list:
    from longrope_search.search.space import Genome
    from longrope_search.search.trial import Individual

    return [(Individual(Genome(np.arange(4) + i, 0), 0, "mutation"), None) for i in range(n)]


def evaluate_all(pool: RayEvaluator, work: list, on_result=lambda ind, ev: None) -> None:
    """Submit as the driver does (whenever a slot is free) until everything is back."""
    queue = list(work)
    while queue or pool.pending():
        while queue and pool.free_slots() > 0:
            pool.submit(*queue.pop(0), None)
        for ind, ev in pool.wait():
            on_result(ind, ev)


def test_a_candidate_that_kills_workers_is_failed_without_charging_others(cluster,
                                                                          tmp_path) -> None:
    work = individuals(12)
    killer = work[3][0].key  # the second task sent to worker 1: queued, then running
    pool = RayEvaluator(spec(tmp_path), 2, gpus_per_worker=0, cpus_per_worker=0.01,
                        worker_cls=fake_worker(0.05, frozenset({killer})))
    seen = []
    evaluate_all(pool, work, lambda ind, ev: seen.append(ev))
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
    evaluate_all(pool, individuals(8), lambda ind, ev: (seen.append(ev), time.sleep(0.2)))
    runs = sorted((e.extra["start"], e.extra["end"]) for e in seen)
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(runs)]
    assert len(seen) == 8 and max(gaps) < 0.1, gaps  # unpipelined, each gap would be ≥ 0.2 s
    pool.shutdown()


def test_workers_that_cannot_start_raise_instead_of_hanging(cluster, tmp_path) -> None:
    pool = RayEvaluator(spec(tmp_path), 2, gpus_per_worker=0, cpus_per_worker=0.01,
                        worker_cls=fake_worker(broken=True))
    with pytest.raises(RuntimeError, match="no such model"):
        evaluate_all(pool, individuals(3))
    assert not pool.failures  # a worker that never started is no candidate's fault
    pool.shutdown()


def scorer_pids(since: float) -> list[int]:
    import psutil

    return sorted(p.pid for p in psutil.process_iter(["cmdline", "create_time"])
                  if (p.info["cmdline"] or [""])[0].startswith("ray::ScorerWorker")
                  and p.info["create_time"] >= since)


@pytest.mark.parametrize("moment", ["early", "mid-generation", "final steps"])
def test_a_worker_killed_at_any_moment_still_completes_the_job(
        cluster, tmp_path: Path, moment: str, capsys: pytest.CaptureFixture) -> None:
    """`run --ray --workers 2` with a ScorerWorker SIGKILLed before the first result, in the
    middle of a generation, or once every candidate is in (held-out comparison, n̂ = 0
    re-score, summary): the job ends complete, every candidate evaluated once."""
    from longrope_search.cli import main

    s = spec(tmp_path, name="job", **FP32, space={"n_hat": [4]},
             deploy="python")  # n̂ > 0: a re-score at the end
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(s.to_dict()))
    budget = s.evaluation_budget
    when = {"early": lambda n: n == 0, "mid-generation": lambda n: n >= 13,
            "final steps": lambda n: n >= budget}[moment]
    killed: list[int] = []
    t0 = time.time() - 1

    def kill() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            pids = scorer_pids(t0)
            done = (len(ledger_keys(s.job_dir, "job"))
                    if (s.job_dir / "ledger.journal").exists() else 0)
            if len(pids) == 2 and when(done):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(done)
            time.sleep(0.01)

    threading.Thread(target=kill, daemon=True).start()
    assert main(["run", str(config), "--ray", "--workers", "2", "--gpus-per-worker", "1",
                 "--no-progress"]) == 0
    assert killed, "the worker was not killed"
    out = capsys.readouterr().out
    assert "best: ppl" in out and "on held-out documents" in out
    keys = ledger_keys(s.job_dir, "job")
    assert len(keys) == len(set(keys)) == budget
    best = json.loads((s.job_dir / "best.json").read_text())
    assert best["search_ppl_without_n_hat"] > 0  # the end-of-job re-score ran
    rows = json.loads((s.job_dir / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["best", "best, n̂ = 0 (exported)", "unmodified",
                                           "pi", "ntk", "yarn"]


def test_a_gguf_model_on_ray_workers(cluster, tmp_path: Path) -> None:
    """Workers load a .gguf model as the coordinator would: the same search as in-process."""
    from longrope_search.defaults import EMBEDDED_MODEL
    from longrope_search.llamacpp.convert import convert_to_gguf

    model = str(convert_to_gguf(EMBEDDED_MODEL, tmp_path / "embedded.gguf"))
    small = {"model": model, "k_documents": 2, **FP32,
             "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                           "generations": 1}}
    s = spec(tmp_path / "ray", name="job", **small)
    pool = RayEvaluator(s, 2, gpus_per_worker=1)
    try:
        on_ray = run_search(s, evaluator=pool, progress=False)
    finally:
        pool.shutdown()
    local = run_search(spec(tmp_path / "local", name="job", **small), progress=False)
    same_best(on_ray, local)
    assert json.loads((s.job_dir / "best.json").read_text())["model"] == model


def test_the_multi_length_fitness_on_ray_matches_in_process(cluster, embedded, tmp_path) -> None:
    """scoring.lengths reaches the workers: the same evaluations and comparison by length."""
    over = {"scoring": {"dtype": "float32", "lengths": [256, 1024], "weights": [1, 3]},
            "k_documents": 2, "search": {"population": 4, "mutations": 2, "crossovers": 2,
                                            "top_k": 2, "generations": 1}}
    local = run_search(spec(tmp_path / "local", name="job", **over), loaded=embedded,
                       progress=False)
    s = spec(tmp_path / "ray", name="job", **over)
    pool = RayEvaluator(s, 2, gpus_per_worker=1)
    remote = run_search(s, evaluator=pool, progress=False)
    pool.shutdown()
    same_best(local, remote)
    assert remote.best_evaluation.cost_tokens == 2 * (256 + 1024)  # both lengths are paid

    def table(rows):
        return {(r["method"], n): v for r in rows for n, v in r["ppl_by_length"].items()}

    assert table(local.comparison) == pytest.approx(table(remote.comparison), rel=1e-6)
