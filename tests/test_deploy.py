"""The engine a job is searched for: what it may search (n̂), what each length gets, the
multi-length fitness, and the held-out comparison by length; bad input is refused naming the
field, in-process, through the CLI, the API and on Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from longrope_search.deploy import (
    ENGINE_NAMES,
    Engine,
    FactorSets,
    default_lengths,
    deployed,
    two_sets_safe,
)
from longrope_search.errors import ConfigError
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import Candidate
from longrope_search.search.fitness import scorer_for
from longrope_search.search.job import job_from_dict
from longrope_search.search.outcome import NO_N_HAT, UNMODIFIED
from longrope_search.search.plan import check, plan_job
from longrope_search.search.run import run_search
from longrope_search.search.trial import OK

LAM = np.linspace(1.0, 8.0, 32)
TINY = {"extension_ratio": 8, "k_documents": 2, "scoring": {"dtype": "float32", "device": "cpu"},
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}}


def job(tmp_path: Path, name: str = "job", **over) -> dict:
    scoring = {**TINY["scoring"], **over.pop("scoring", {})}
    return {"name": name, **TINY, "results_dir": str(tmp_path), **over, "scoring": scoring}


# -- what each engine applies at each length (pure) ----------------------------------------------

@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("length", [64, 128, 1024])
def test_one_set_engines_apply_the_long_factors_at_every_length(engine, length):
    long = Candidate(LAM, 8, 1.2, "best")
    got = deployed(engine, FactorSets(long), length, 128)
    assert np.array_equal(got.lambdas, LAM) and got.attention_factor == 1.2
    assert got.n_hat == (8 if engine == "python" else 0)  # no inference engine applies n̂


def test_a_phi3_model_in_transformers_gets_the_short_set_up_to_L():
    assert two_sets_safe("transformers", "phi3") and not two_sets_safe("transformers", "llama")
    assert not any(two_sets_safe(e, "phi3") for e in ("vllm", "sglang", "llamacpp", "python"))
    sets = FactorSets(Candidate(LAM, 0, 1.2, "best"), np.ones(32))
    short = deployed(Engine.TRANSFORMERS, sets, 128, 128)
    assert np.all(short.lambdas == 1.0) and short.attention_factor == 1.2  # one m for all
    assert np.array_equal(deployed(Engine.TRANSFORMERS, sets, 129, 128).lambdas, LAM)


def test_default_lengths():
    assert default_lengths(128, 1024) == (64, 128, 256, 512, 1024)
    assert default_lengths(4096, 8192) == (2048, 4096, 8192)  # 4L is past L'


# -- the spec ------------------------------------------------------------------------------------

BAD = [
    ({"deploy": "tgi"}, "deploy", "transformers"),
    ({"space": {"n_hat": [0, 4]}}, "space.n_hat", "deploy: python"),
    ({"deploy": "vllm", "space": {"n_hat": [8]}}, "space.n_hat", "deploy: vllm applies no n̂"),
    ({"scoring": {"lengths": [1, 1024]}}, "scoring.lengths[0]", "≥ 2"),
    ({"scoring": {"lengths": [256, 1024], "weights": [1, -1]}}, "scoring.weights[1]", "≥ 0"),
    ({"scoring": {"lengths": [256, 1024], "weights": [1]}}, "scoring.weights",
     "1 weights for 2 lengths"),
    ({"scoring": {"lengths": [256, 1024], "weights": [0, 0]}}, "scoring.weights", "every"),
    ({"scoring": {"lengths": [256, 256]}}, "scoring.lengths", "twice"),
    ({"scoring": {"mode": "sliding", "lengths": [256]}}, "scoring.lengths", "mode: truncate"),
    ({"comparison_lengths": [0]}, "comparison_lengths[0]", "≥ 2"),
]
BEYOND = [  # need the model's L to know L'
    ({"scoring": {"lengths": [256, 4096]}}, "scoring.lengths", "beyond the target length"),
    ({"comparison_lengths": [2048]}, "comparison_lengths", "beyond the target length"),
]


@pytest.mark.parametrize("over, field, words", BAD + BEYOND)
def test_bad_deploy_and_length_input_is_refused_naming_the_field(tmp_path, over, field, words):
    with pytest.raises(ConfigError) as err:
        plan_job(job_from_dict(job(tmp_path, **over)))
    assert err.value.field == field and words in str(err.value)


def test_a_phi3_models_fitness_lengths_stay_above_L(tmp_path, monkeypatch):
    from longrope_search.search import plan as plan_module

    monkeypatch.setattr(plan_module, "two_sets_safe", lambda engine, model_type: True)
    with pytest.raises(ConfigError, match="applies the short factors") as err:
        plan_job(job_from_dict(job(tmp_path, scoring={"lengths": [128, 1024]})))
    assert err.value.field == "scoring.lengths"
    plan_job(job_from_dict(job(tmp_path, scoring={"lengths": [256, 1024]})))


@pytest.mark.parametrize("ray", [False, True], ids=["in-process", "ray"])
@pytest.mark.parametrize("over, field, words", [BAD[1], BAD[4], BEYOND[0]])
def test_the_cli_refuses_them_before_any_weights_load(tmp_path, capsys, over, field, words, ray):
    import ray as ray_module

    from longrope_search.cli import main

    path = tmp_path / "job.yaml"
    spec = job(tmp_path, **over)
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "results_dir"}))
    pool = ["--ray", "--workers", "1"] if ray else []
    assert main(["run", str(path), "--results-dir", str(tmp_path / "runs"), *pool]) != 0
    err = capsys.readouterr().err
    assert field in err and words in err and "Loading weights" not in err
    assert not (tmp_path / "runs" / "job").exists()
    assert not ray_module.is_initialized()  # refused before a Ray cluster was started


@pytest.mark.parametrize("over, field, words", [BAD[0], BAD[2], BAD[5], BEYOND[1]])
def test_the_api_refuses_them_with_422(tmp_path, over, field, words):
    from fastapi.testclient import TestClient

    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner

    manager = JobManager(tmp_path / "results", local_runner())
    try:
        body = {k: v for k, v in job(tmp_path, name="bad", **over).items()
                if k != "results_dir"}
        r = TestClient(create_app(manager)).post("/api/jobs", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field and words in r.text
        assert not (manager.results_dir / "bad").exists()
    finally:
        manager.close()


# -- searches ------------------------------------------------------------------------------------

def test_a_job_for_an_engine_without_n_hat_never_reports_one(tmp_path, embedded):
    result = run_search(job_from_dict(job(tmp_path, deploy="vllm")), loaded=embedded,
                        progress=False)
    best = json.loads((result.job_dir / "best.json").read_text())
    assert best["n_hat"] == 0 and best["deploy"] == "vllm" and "n_hat_note" not in best
    import pandas as pd

    assert set(pd.read_parquet(result.job_dir / "generations").n_hat) == {0}
    comparison = json.loads((result.job_dir / "comparison.json").read_text())
    methods = [r["method"] for r in comparison["rows"]]
    assert methods == ["best", UNMODIFIED, "pi", "ntk", "yarn"]
    assert comparison["lengths"] == [64, 128, 256, 512, 1024] and "vLLM" in comparison["semantics"]
    for row in comparison["rows"]:
        assert list(row["ppl_by_length"]) == ["64", "128", "256", "512", "1024"]
        assert row["ppl"] == row["ppl_by_length"]["1024"]  # truncate mode: the same forward
    # up to L the unmodified model and PI/NTK/YaRN configs differ: nothing is tuned per length
    rows = {r["method"]: r["ppl_by_length"] for r in comparison["rows"]}
    assert rows[UNMODIFIED]["128"] != rows["yarn"]["128"]


def test_a_python_job_searches_n_hat_and_says_so(tmp_path, embedded, capsys):
    from longrope_search.search.run import summarize

    result = run_search(job_from_dict(job(tmp_path, deploy="python", space={"n_hat": [8]})),
                        loaded=embedded, progress=False)
    best = json.loads((result.job_dir / "best.json").read_text())
    assert best["n_hat"] == 8 and "apply_factors" in best["n_hat_note"]
    assert "apply_factors only" in summarize(result)
    rows = json.loads((result.job_dir / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in rows[:2]] == ["best", NO_N_HAT]
    assert rows[0]["ppl"] != rows[1]["ppl"]


def _per_length_nll(plan, embedded, candidate, lengths):
    docs = max(scorer_for(plan, embedded).parts, key=lambda p: p.length).documents
    return np.array([PerplexityScorer(embedded.model, plan.geometry, docs, length=n)
                     .score([candidate])[0].nll for n in lengths])  # (lengths, documents)


def test_the_multi_length_fitness_is_the_weighted_mean_over_lengths(tmp_path, embedded):
    spec = job_from_dict(job(tmp_path, scoring={"lengths": [256, 1024], "weights": [1, 3]}))
    result = run_search(spec, loaded=embedded, progress=False)
    plan = check(spec).plan
    per_length = _per_length_nll(plan, embedded, result.best, (256, 1024))
    want = 0.25 * per_length[0] + 0.75 * per_length[1]
    assert result.best_evaluation.nll == pytest.approx(tuple(want), rel=1e-6)
    assert result.best_evaluation.status == OK
    assert result.best_evaluation.cost_tokens == 2 * (256 + 1024)  # every length is paid for


def test_a_gradient_step_descends_the_weighted_objective(tmp_path, embedded):
    from longrope_search.evaluation.gradient import gradient

    spec = job_from_dict(job(tmp_path, scoring={"lengths": [256, 1024], "weights": [1, 1]}))
    plan = check(spec).plan
    scorer = scorer_for(plan, embedded)
    cand = Candidate(np.asarray(plan.space.lambdas(plan.seeds[2][1])), 0,
                     plan.attention_factor)
    g = gradient(scorer, cand)
    parts = [gradient(p, cand) for p in scorer.parts]
    assert g.lambdas == pytest.approx(0.5 * parts[0].lambdas + 0.5 * parts[1].lambdas)
    assert g.forward_tokens == sum(p.forward_tokens for p in parts)
    # the weighted loss changes along a small step as the gradient says (the right objective)
    direction = -g.lambdas / np.linalg.norm(g.lambdas)
    eps = 0.01
    step = Candidate(cand.lambdas + eps * direction, 0, cand.attention_factor)
    before = np.mean(scorer.score([cand])[0].nll)
    change = np.mean(scorer.score([step])[0].nll) - before
    assert change < 0 and change == pytest.approx(eps * g.lambdas @ direction, rel=0.2)
    assert math.isclose(before, g.mean_nll, rel_tol=1e-5)
