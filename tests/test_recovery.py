"""Short-context recovery: a finished long job's short factors, searched at L under its
attention factor (``longrope-search recover``), then carried by the exports."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from longrope_search.cli import main
from longrope_search.defaults import EMBEDDED_MODEL
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.export import export_job
from longrope_search.search.job import job_from_dict, load_job
from longrope_search.search.recovery import recovery_spec
from longrope_search.search.run import run_search

MODEL_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def long_job(tmp_path_factory, embedded) -> Path:
    spec = job_from_dict({
        "name": "long", "extension_ratio": 4, "k_documents": 2,
        "results_dir": str(tmp_path_factory.mktemp("jobs")),
        "scoring": {"dtype": "float32", "device": "cpu"}, "space": {"n_hat": [0, 4]},
            "deploy": "python",
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}})
    return run_search(spec, loaded=embedded, progress=False).job_dir


@pytest.fixture(scope="module")
def short_job(long_job) -> Path:
    """Recovered through the CLI, as a user would."""
    assert main(["recover", str(long_job), "--strategy", "gradient", "--evaluations", "7",
                 "--no-progress"]) == 0
    return long_job.parent / "long-short"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_recovery_job_scores_short_windows_under_the_long_attention_factor(long_job,
                                                                                short_job):
    long_best, best = read(long_job / "best.json"), read(short_job / "best.json")
    spec = load_job(short_job / "job.yaml")
    assert spec.factors == "short" and spec.target_length is None
    assert spec.attention_factor == long_best["attention_factor"] > 1
    assert (spec.scoring.mode, spec.scoring.stride, spec.scoring.document_tokens) == (
        "sliding", 128, 512)  # windows of L over the text the long job read
    assert spec.space.n_hat == (0,) and spec.space.lambda_max == 4
    assert (best["factors"], best["target_length"], best["n_hat"]) == ("short", 128, 0)
    assert best["attention_factor"] == long_best["attention_factor"]
    tables = pd.read_parquet(short_job / "generations")
    assert set(tables.operator) >= {"seed:none", "gradient"}  # λ = 1 is where it starts
    assert (tables.attention_factor == long_best["attention_factor"]).all()
    ones = tables[tables.operator == "seed:none"].ppl.min()
    assert best["search_ppl"] <= ones  # never worse than no short factors at all
    rows = {r["method"]: r["ppl"] for r in read(short_job / "comparison.json")["rows"]}
    assert {"best", "unmodified", "ones"} <= set(rows)
    assert rows["unmodified"] < rows["ones"]  # m > 1 on short inputs costs perplexity


def test_exports_carry_the_recovered_short_factors_only_where_safe(long_job, short_job):
    """A Llama in transformers (or vLLM) would mix short- and long-rotated keys in one KV
    cache: its exports carry the long set for every length and name the recovery they drop;
    the longrope record keeps the recovery."""
    best = read(short_job / "best.json")
    long_best = read(long_job / "best.json")
    hf = export_job(long_job, "hf", short_factors=short_job)
    assert hf["rope_parameters"]["short_factor"] == pytest.approx(long_best["lambdas"])
    assert hf["rope_parameters"]["long_factor"] == pytest.approx(long_best["lambdas"])
    notes = hf["longrope_search"]["notes"]
    assert "recovered short factors of long-short are not used" in notes[0]
    vllm = export_job(long_job, "vllm")["rope_scaling"]
    assert vllm["short_factor"] == pytest.approx(long_best["lambdas"])
    assert vllm["short_mscale"] == vllm["long_mscale"] == long_best["attention_factor"]
    record = export_job(long_job, "longrope", short_factors=short_job)
    assert record["short_factor_from"] == "long-short"
    assert record["short_factor"] == pytest.approx(best["lambdas"])
    with pytest.raises(ConfigError, match="searched long factors"):
        export_job(long_job, "hf", short_factors=long_job)


@pytest.mark.parametrize("fmt, model_type, kept", [
    ("hf", "phi3", True), ("hf", "phimoe", True), ("hf", "llama", False),
    ("hf", "qwen2", False), ("vllm", "phi3", False), ("hf", None, False)])
def test_a_second_factor_set_only_where_the_cache_is_refilled(fmt, model_type, kept):
    from longrope_search.export import ShortFactors, engine_short_factors

    best = {"lambdas": [1.0, 2.0, 4.0], "attention_factor": 1.2}
    recovered = ShortFactors([1.0, 1.1, 1.3], 1.05, "job-short")
    short, notes = engine_short_factors(best, recovered, fmt, model_type)
    assert (short == recovered) is kept and (not notes) is kept
    if not kept:
        assert short == ShortFactors([1.0, 2.0, 4.0], 1.2)


def test_a_llama_export_gives_windows_of_L_the_long_factors(long_job, short_job, embedded,
                                                           tmp_path):
    """The exported config.json through from_pretrained: one set, so windows of L and the
    long context alike get the long factors (the long search's perplexity at L'), not the
    recovery's."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in MODEL_FILES:
        shutil.copy(Path(EMBEDDED_MODEL) / name, folder / name)
    (folder / "config.json").write_text(json.dumps(export_job(long_job, "hf", with_config=True)))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    spec = load_job(long_job / "job.yaml")
    docs = load_documents(spec.documents_path, embedded.tokenizer, min_tokens=512,
                          k=spec.k_documents, seed=spec.documents_seed, max_tokens=512)
    with torch.no_grad():
        long_nll = [model(input_ids=d[None], labels=d[None]).loss.item() for d in docs]
        short_nll = [model(input_ids=w[None], labels=w[None]).loss.item()
                     for d in docs for w in d.split(128)]
    assert math.exp(np.mean(long_nll)) == pytest.approx(
        read(long_job / "best.json")["search_ppl"], rel=1e-3)
    assert not math.isclose(math.exp(np.mean(short_nll)),
                            read(short_job / "best.json")["search_ppl"], rel_tol=1e-3)


def test_a_short_factor_spec_is_checked_field_by_field(long_job):
    with pytest.raises(ConfigError, match="extension_ratio"):
        job_from_dict({"name": "x", "factors": "short", "extension_ratio": 2})
    with pytest.raises(ConfigError, match="document_tokens"):
        job_from_dict({"name": "x", "extension_ratio": 2, "scoring": {"document_tokens": 512}})
    with pytest.raises(ConfigError, match="target_length"):
        run_search(job_from_dict({"name": "x", "factors": "short", "target_length": 256,
                                  "space": {"lambda_max": 4}}))
    with pytest.raises(ConfigError, match=r"space\.lambda_max"):
        run_search(job_from_dict({"name": "x", "factors": "short"}))
    with pytest.raises(ConfigError, match="already searched short factors"):
        recovery_spec(long_job.parent / "long-short")


def test_a_recovery_no_better_than_ones_is_not_attached(long_job, short_job, tmp_path):
    """Found by name, a recovery whose held-out perplexity is not below all ones' is left out
    of the exports with a note (``--short-from`` still attaches it)."""
    jobs = tmp_path / "jobs"
    shutil.copytree(long_job, jobs / "long")
    shutil.copytree(short_job, jobs / "long-short")
    comparison = read(jobs / "long-short" / "comparison.json")
    ones = next(r["ppl"] for r in comparison["rows"] if r["method"] == "ones")
    for r in comparison["rows"]:
        r["ppl"] = ones + 1e-3 if r["method"] == "best" else r["ppl"]
    (jobs / "long-short" / "comparison.json").write_text(json.dumps(comparison))

    record = export_job(jobs / "long", "longrope")
    assert record["short_factor_from"] is None and record["short_factor"] == [1.0] * len(
        record["lambdas"])
    notes = export_job(jobs / "long", "hf")["longrope_search"]["notes"]
    assert "not better than ones" in notes[0] and "--short-from long-short" in notes[0]
    forced = export_job(jobs / "long", "longrope", short_factors=jobs / "long-short")
    assert forced["short_factor_from"] == "long-short"


@pytest.mark.parametrize("evaluations", ["0", "-3"])
def test_recover_refuses_a_budget_below_one_naming_it(long_job, capsys, evaluations):
    """``--evaluations 0`` was ignored (the job ran its default budget)."""
    assert main(["recover", str(long_job), "--evaluations", evaluations, "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "budget.evaluations" in err and "Traceback" not in err
