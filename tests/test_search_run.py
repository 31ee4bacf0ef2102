"""Search jobs end to end on the embedded model: ledger, SIGKILL resume, tables, strategies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml

from longrope_search.errors import ConfigError
from longrope_search.search.job import JobSpec, job_from_dict, load_job
from longrope_search.search.jobdir import JobDir, claim
from longrope_search.search.ledger import open_study
from longrope_search.search.run import run_search

SMALL = {
    "extension_ratio": 8, "k_documents": 3, "seed": 0,
    "search": {"population": 10, "mutations": 4, "crossovers": 4, "top_k": 5,
                  "generations": 3},
}


def spec(tmp_path: Path, name: str = "small", **changes) -> JobSpec:
    data = {"name": name, **SMALL, "results_dir": str(tmp_path), **changes}
    return job_from_dict(data)


def ledger_keys(job_dir: Path, name: str) -> list[str]:
    study = open_study(job_dir / "ledger.journal", name)
    return [t.user_attrs["key"] for t in study.get_trials(deepcopy=False)]


def test_run_writes_ledger_tables_and_best(tmp_path: Path, embedded) -> None:
    s = spec(tmp_path)
    result = run_search(s, loaded=embedded, progress=False)
    keys = ledger_keys(result.job_dir, s.name)
    assert len(keys) == len(set(keys)) == result.evaluations == s.search.budget
    gens = pd.read_parquet(result.job_dir / "generations")
    assert sorted(gens.generation.astype(int).unique()) == [0, 1, 2, 3]
    new = gens[gens.operator != "parent"]
    assert len(new) == s.search.budget
    assert {"seed:pi", "seed:ntk", "seed:yarn", "mutation", "crossover"} <= set(new.operator)
    lam = np.stack(new.lambdas.to_numpy())
    assert lam.shape[1] == embedded.geometry.num_pairs
    assert np.all(np.diff(lam, axis=1) >= -1e-6)  # every candidate monotone
    ok = new[new.status == "ok"]
    assert result.best_evaluation.ppl == pytest.approx(ok.ppl.min())
    seeds = new[new.operator.str.startswith("seed")]
    assert result.best_evaluation.ppl <= seeds.ppl.min()
    # one dataset for three readers
    glob = str(result.job_dir / "generations" / "*.parquet")
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')"
                      ).fetchall()[0][0] == len(gens)
    assert pl.scan_parquet(glob).collect().height == len(gens)
    assert (result.job_dir / "best.json").exists()


class Cancel(Exception):
    pass


def cancel_after(n: int, seen: list[dict]):
    """An ``on_progress`` that records each report and cancels at the n-th evaluation."""

    def hook(progress: dict) -> None:
        seen.append(progress)
        if progress["evaluations"] >= n:
            raise Cancel

    return hook


@pytest.mark.parametrize("strategy", ["evolution", "steady", "tpe", "cmaes", "random",
                                      "gradient", "memetic"])
def test_each_strategy_reports_cancels_and_resumes_after_sigkill(tmp_path: Path, embedded,
                                                                 strategy: str) -> None:
    """In-process: killed mid-run, resumed and cancelled, resumed again: nothing scored twice,
    the same tables as an uninterrupted run (steady-state evolution included: in one process
    its completion order is fixed)."""
    fp32 = {"scoring": {"dtype": "float32"}}  # the `embedded` fixture's, in the subprocess too
    reference = run_search(spec(tmp_path / "a", name="job", strategy=strategy, **fp32),
                           loaded=embedded, progress=False)
    s = spec(tmp_path / "b", name="job", strategy=strategy, **fp32)
    s.job_dir.mkdir(parents=True)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(s.to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "longrope_search.cli", "run", str(config),
                             "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})
    target = s.search.population + 3  # inside generation 1
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (s.job_dir / "ledger.journal").exists() and len(ledger_keys(s.job_dir, "job")) >= target:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = ledger_keys(s.job_dir, "job")
    assert target <= len(before) < s.evaluation_budget  # really interrupted mid-run

    seen: list[dict] = []
    with pytest.raises(Cancel):
        run_search(s, loaded=embedded, progress=False, on_progress=cancel_after(2, seen))
    assert len(ledger_keys(s.job_dir, "job")) == len(before) + 2  # within one evaluation
    assert [p["evaluations"] for p in seen] == [0, 1, 2]
    assert seen[0]["cost_tokens"] < seen[-1]["cost_tokens"]
    assert seen[-1]["strategy"] == strategy and seen[-1]["budget"] == s.evaluation_budget

    resumed = run_search(s, loaded=embedded, progress=False)
    keys = ledger_keys(s.job_dir, "job")
    assert len(keys) == len(set(keys)) == len(ledger_keys(reference.job_dir, "job"))
    assert keys[: len(before)] == before
    assert resumed.reused == len(before) + 2
    cols = ["generation", "candidate_id", "operator", "parents", "n_hat", "status",
            "cost_spent_tokens"]
    a = pd.read_parquet(reference.job_dir / "generations")
    b = pd.read_parquet(s.job_dir / "generations")
    assert a[cols].astype(str).equals(b[cols].astype(str))
    assert a.mean_nll.to_numpy() == pytest.approx(b.mean_nll.to_numpy(), nan_ok=True)
    assert resumed.best_evaluation.nll == pytest.approx(reference.best_evaluation.nll)


def test_same_job_twice_reuses_everything(tmp_path: Path, embedded) -> None:
    first = run_search(spec(tmp_path), loaded=embedded, progress=False)
    again = run_search(spec(tmp_path), loaded=embedded, progress=False)
    assert again.evaluations == 0 and again.reused == first.evaluations
    with pytest.raises(ConfigError, match=r"already exists .* with a different spec"):
        run_search(spec(tmp_path, seed=1), loaded=embedded, progress=False)


def test_early_stopping_prunes_without_changing_the_best(tmp_path: Path, embedded) -> None:
    on = run_search(spec(tmp_path / "on"), loaded=embedded, progress=False)
    off = run_search(spec(tmp_path / "off", early_stopping={"enabled": False}),
                     loaded=embedded, progress=False)
    assert on.pruned > 0 and off.pruned == 0
    assert on.document_evaluations < off.document_evaluations
    assert np.array_equal(on.best.lambdas, off.best.lambdas)
    gens = pd.read_parquet(on.job_dir / "generations")
    pruned = gens[gens.status == "pruned"]
    assert (pruned.documents_scored < 3).all() and pruned.nll.map(len).min() >= 1


def test_sequential_early_stopping_prunes_in_a_search(tmp_path: Path, embedded) -> None:
    es = {"rule": "sequential", "z": 1.0}
    evolution = {**SMALL["search"], "generations": 4}
    on = run_search(spec(tmp_path, early_stopping=es, search=evolution), loaded=embedded,
                    progress=False)
    assert on.pruned > 0
    gens = pd.read_parquet(on.job_dir / "generations")
    pruned = gens[gens.status == "pruned"]
    assert (pruned.documents_scored < 3).all()
    # calibrated on at least 16 complete candidates: none before generation 2
    assert pruned.generation.astype(int).min() >= 2


def test_resume_accepts_a_spec_written_before_new_keys(tmp_path: Path) -> None:
    s = spec(tmp_path)
    claim(JobDir(s.job_dir), s)
    path = s.job_dir / "job.yaml"
    old = yaml.safe_load(path.read_text())
    del old["early_stopping"]["rule"], old["early_stopping"]["z"], old["budget"]
    path.write_text(yaml.safe_dump(old))
    claim(JobDir(s.job_dir), s)  # the same job: defaults fill the missing keys
    with pytest.raises(ConfigError, match="different spec"):
        claim(JobDir(s.job_dir), spec(tmp_path, early_stopping={"rule": "sequential"}))


def test_where_the_results_folder_is_spelled_is_not_part_of_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = job_from_dict({"name": "small", **SMALL, "results_dir": "runs"})
    absolute = relative.with_results_dir(tmp_path / "runs")
    claim(JobDir(relative.job_dir), relative)
    claim(JobDir(absolute.job_dir), absolute)  # no "different spec"


@pytest.mark.parametrize("strategy", ["random", "tpe", "cmaes"])
def test_optuna_strategies_spend_the_same_budget(tmp_path: Path, embedded,
                                                 strategy: str) -> None:
    s = spec(tmp_path, strategy=strategy,
             search={"population": 6, "mutations": 3, "crossovers": 3, "top_k": 3,
                        "generations": 1})
    result = run_search(s, loaded=embedded, progress=False)
    gens = pd.read_parquet(result.job_dir / "generations")
    assert len(gens) == s.search.budget == 12
    assert set(gens.operator) == {strategy, "seed:pi", "seed:ntk", "seed:yarn"}
    lam = np.stack(gens.lambdas.to_numpy())
    assert np.all(np.diff(lam, axis=1) >= -1e-6)
    assert len(ledger_keys(result.job_dir, s.name)) == 12


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "extension_ratio": 8, "serach": {}}, "serach: unknown key.*search"),
        ({"name": "x", "extension_ratio": "eight"}, "extension_ratio: expected a number"),
        ({"name": "x", "extension_ratio": 8, "target_length": 1024}, "target_length: give exactly"),
        ({"name": "x"}, "target_length: give exactly one"),
        ({"name": "../etc", "extension_ratio": 8}, "name: '../etc' is not a valid name"),
        ({"name": "x", "extension_ratio": 8, "strategy": "sgd"}, "strategy: unknown"),
        ({"name": "x", "extension_ratio": 0.5}, "extension_ratio: must be > 1"),
        ({"name": "x", "extension_ratio": 8, "search": {"top_k": 100}},
         "search.top_k: top_k 100 is larger than population 64"),
        ({"extension_ratio": 8}, "name: required key missing"),
        ({"name": "x", "extension_ratio": 8, "early_stopping": {"rule": "race"}},
         "early_stopping.rule: unknown rule 'race'"),
        ({"name": "x", "extension_ratio": 8, "early_stopping": {"z": 0}},
         "early_stopping.z: must be > 0"),
        ({"name": "x", "extension_ratio": 8, "early_stopping": {"margin": -0.1}},
         "early_stopping.margin: must be ≥ 0"),
    ],
)
def test_job_spec_errors_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job_from_dict(data)


def test_n_hat_beyond_target_is_refused_before_loading(tmp_path: Path) -> None:
    from longrope_search.search.plan import plan_job

    with pytest.raises(ConfigError, match=r"space\.n_hat: values \[256\]"):
        plan_job(spec(tmp_path, extension_ratio=1.5, space={"n_hat": [0, 8, 256]},
                          deploy="python"))
    # the default choices are those below L' = 192 (with deploy: python; else n̂ is 0)
    python = plan_job(spec(tmp_path, extension_ratio=1.5, deploy="python"))
    assert max(python.space.n_hat_choices) == 128
    assert plan_job(spec(tmp_path, extension_ratio=1.5)).space.n_hat_choices == (0,)


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path: Path) -> None:
    job = load_job(path)
    assert job.name == path.stem
