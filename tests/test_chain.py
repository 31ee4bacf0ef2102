"""Chained jobs: 2× → 4× → 8× from one spec, each stage seeded with the previous one's best
mapped to its ratio, resumable after a SIGKILL in any stage, tables as one dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from longrope_search.errors import ConfigError
from longrope_search.export import export_job
from longrope_search.rope import rescale_ratio
from longrope_search.search.chain import stage_spec
from longrope_search.search.job import JobSpec, job_from_dict
from longrope_search.search.ledger import open_study
from longrope_search.search.run import run_job

STAGES = [{"extension_ratio": 2}, {"extension_ratio": 4}, {"extension_ratio": 8}]
SMALL = {"k_documents": 2, "seed": 0, "scoring": {"dtype": "float32"}, "space": {"n_hat": [0, 4]},
         "deploy": "python",
         "search": {"population": 6, "mutations": 3, "crossovers": 3, "top_k": 3,
                       "generations": 2}}
NAMES = ["00-2x", "01-4x", "02-8x"]


def chain(tmp_path: Path, name: str = "chain", **changes) -> JobSpec:
    return job_from_dict({"name": name, **SMALL, "stages": STAGES,
                          "results_dir": str(tmp_path), **changes})


def ledger_keys(stage_dir: Path) -> list[str]:
    if not (stage_dir / "ledger.journal").exists():
        return []
    study = open_study(stage_dir / "ledger.journal", stage_dir.name)
    return [t.user_attrs["key"] for t in study.get_trials(deepcopy=False)]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_mapping_keeps_ones_and_takes_pi_to_pi() -> None:
    lam = np.array([1.0, 1.5, 2.0, 2.0])
    assert rescale_ratio(lam, 2, 8) == pytest.approx([1.0, 4.5, 8.0, 8.0])
    assert rescale_ratio(rescale_ratio(lam, 2, 8), 8, 2) == pytest.approx(lam)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded) -> Path:
    spec = chain(tmp_path_factory.mktemp("reference"))
    run_job(spec, loaded=embedded, progress=False)
    return spec.job_dir


def test_each_stage_starts_from_the_previous_best(reference) -> None:
    tables = pd.read_parquet(reference / "generations")  # every stage, one dataset
    assert sorted(tables.stage.astype(int).unique()) == [0, 1, 2]
    for i, name in enumerate(NAMES):
        stage = reference / "stages" / name
        best = read(stage / "best.json")
        assert best["extension_ratio"] == 2 ** (i + 1)
        rows = tables[tables.stage.astype(int) == i]
        assert set(rows.seeded_from.dropna()) == ({NAMES[i - 1]} if i else set())
        assert len(ledger_keys(stage)) == SMALL["search"]["population"] + 2 * 6
        if i == 0:
            continue
        before = read(reference / "stages" / NAMES[i - 1] / "best.json")
        seed = rows[rows.operator == f"seed:stage-{NAMES[i - 1]}"]
        assert len(seed) == 1  # the previous best, mapped, beside PI, NTK and YaRN
        mapped = rescale_ratio(before["lambdas"], before["extension_ratio"],
                               best["extension_ratio"])
        assert np.stack(seed.lambdas.to_numpy())[0] == pytest.approx(mapped, abs=0.006)
    top = read(reference / "best.json")
    last = read(reference / "stages" / NAMES[-1] / "best.json")
    assert top["lambdas"] == last["lambdas"] and top["extension_ratio"] == 8
    assert [s["stage"] for s in top["stages"]] == NAMES
    assert export_job(reference, "hf")["rope_parameters"]["long_factor"] == pytest.approx(
        last["lambdas"])


def test_a_chain_killed_in_any_stage_resumes_without_repeating(tmp_path, embedded,
                                                                 reference) -> None:
    spec = chain(tmp_path)
    config = tmp_path / "chain.yaml"
    config.write_text(yaml.safe_dump(spec.to_dict()))
    for stage in (NAMES[1], NAMES[2]):  # killed in stage 1, then again in stage 2
        proc = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "run",
                                 str(config), "--no-progress"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        folder = spec.job_dir / "stages" / stage
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and len(ledger_keys(folder)) < 4:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 4 <= len(ledger_keys(folder)) < 18  # really mid-stage
    before = {n: ledger_keys(spec.job_dir / "stages" / n) for n in NAMES}
    run_job(spec, loaded=embedded, progress=False)
    for n in NAMES:
        keys = ledger_keys(spec.job_dir / "stages" / n)
        assert keys[: len(before[n])] == before[n] and len(keys) == len(set(keys)) == 18
    cols = ["stage", "generation", "candidate_id", "operator", "seeded_from", "status"]
    a = pd.read_parquet(reference / "generations")[cols].astype(str)
    b = pd.read_parquet(spec.job_dir / "generations")[cols].astype(str)
    assert a.equals(b)  # the same chain as one run without kills


def test_a_chain_spec_is_checked_before_anything_is_written(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"stages\[1\]\.extension_ratio"):
        run_job(job_from_dict({"name": "c", "results_dir": str(tmp_path),
                               "stages": [{"extension_ratio": 2}, {}]}))
    bad = chain(tmp_path, name="c", k_documents=200)  # more documents than there are
    with pytest.raises(ConfigError, match="documents"):
        run_job(bad)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="stage by stage"):
        from longrope_search.search.run import run_search

        run_search(chain(tmp_path, name="d"))


def test_stage_specs_carry_the_chain(tmp_path) -> None:
    spec = chain(tmp_path, stages=[*STAGES, {"factors": "short"}], strategy="gradient")
    first = stage_spec(spec, 0)
    assert first.name == "00-2x" and first.extension_ratio == 2 and first.stage.index == 0
    assert first.strategy == "gradient" and first.results_dir == str(spec.job_dir / "stages")
    assert stage_spec(spec, 1).seed_files == ()  # the previous stage has not finished


def test_a_chain_on_ray_workers_makes_the_same_tables(tmp_path, reference) -> None:
    import ray

    from longrope_search.distributed import ray_evaluators

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:  # the same chain, then the recovery of its 8× stage as a fourth stage
        spec = chain(tmp_path, stages=[*STAGES, {"factors": "short", "strategy": "gradient",
                                                 "budget": {"evaluations": 5}}])
        run_job(spec, evaluators=ray_evaluators(2, gpus_per_worker=1), progress=False)
    finally:
        ray.shutdown()
    cols = ["stage", "generation", "candidate_id", "operator", "seeded_from", "status"]
    a = pd.read_parquet(reference / "generations")
    b = pd.read_parquet(spec.job_dir / "generations")
    long = b[b.stage.astype(int) < 3].reset_index(drop=True)
    assert a[cols].astype(str).equals(long[cols].astype(str))
    assert a.mean_nll.to_numpy() == pytest.approx(long.mean_nll.to_numpy(), rel=1e-6)
    short = read(spec.job_dir / "stages" / "03-short" / "best.json")
    assert short["factors"] == "short" and short["target_length"] == 128
    top = read(spec.job_dir / "best.json")
    assert top["recovery"] == "stages/03-short" and top["extension_ratio"] == 8
    assert export_job(spec.job_dir, "longrope")["short_factor"] == pytest.approx(
        short["lambdas"])


def test_a_chain_through_the_service(tmp_path, reference) -> None:
    from fastapi.testclient import TestClient

    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner

    manager = JobManager(tmp_path, local_runner())
    client = TestClient(create_app(manager))
    try:
        data = {k: v for k, v in chain(tmp_path).to_dict().items() if k != "results_dir"}
        bad = {**data, "stages": [*STAGES, {"factors": "short", "extension_ratio": 2}]}
        response = client.post("/api/jobs", json=bad)
        assert response.status_code == 422 and "stages[3]" in response.text
        assert not (tmp_path / "chain").exists()
        inside = {**data, "stages": [], "extension_ratio": 2,  # tables beside the results
                  "stage": {"chain": "x", "index": 0}}
        response = client.post("/api/jobs", json=inside)
        assert response.status_code == 422 and response.json()["field"] == "stage"
        assert client.post("/api/jobs", json=data).status_code == 201
        job = manager.wait("chain", timeout=300)
        assert job.state == "finished", job.error
        assert job.progress["stage"] == 2 and job.progress["stage_name"] == "02-8x"
    finally:
        manager.close()
    a = pd.read_parquet(reference / "generations").candidate_id
    assert a.equals(pd.read_parquet(tmp_path / "chain" / "generations").candidate_id)


def test_the_dashboard_reports_read_a_chain_as_one_search(reference) -> None:
    from longrope_search.service import reports

    gens = reports.generation_summaries(reference)
    assert [g["stage"] for g in gens] == [0] * 3 + [1] * 3 + [2] * 3
    curve = reports.cost_curve(reference)
    spent = curve["cost_spent_tokens"]
    assert spent == sorted(spent) and len(set(spent)) == len(spent)  # on across stages
    per_stage = pd.read_parquet(reference / "generations").groupby("stage").cost_tokens.sum()
    assert spent[-1] == per_stage.sum()
    assert len(reports.candidates(reference)["ppl"]) == 3 * 18
    assert reports.generation_rows(reference, 8)[0]["candidate_id"] in set(
        pd.read_parquet(reference / "generations" / "stage-02").candidate_id)
    assert reports.best(reference, top_k=3)["lambdas"] == pytest.approx(
        read(reference / "best.json")["lambdas"], abs=1e-6)
