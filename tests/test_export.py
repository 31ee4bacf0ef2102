"""Exports load in plain transformers and reproduce the searched perplexity; bad files are refused.

Two real (tiny, fp32) searches of the embedded model: one restricted to n̂ = 0, one to n̂ = 8.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import longrope_search
from longrope_search.defaults import EMBEDDED_MODEL
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.export import export_job, model_fingerprint
from longrope_search.search.driver import run_search
from longrope_search.search.job import job_from_dict, load_job

MODEL_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _search(root: Path, name: str, n_hat: list[int], loaded, **more) -> Path:
    spec = job_from_dict({
        "name": name, "extension_ratio": 4, "k_documents": 2, "results_dir": str(root),
        "scoring": {"dtype": "float32", "device": "cpu"}, "space": {"n_hat": n_hat},
        "evolution": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}, **more})
    return run_search(spec, loaded=loaded, progress=False).job_dir


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, embedded):
    root = tmp_path_factory.mktemp("jobs")
    return {"plain": _search(root, "plain", [0], embedded),
            "n_hat": _search(root, "nhat", [8], embedded),
            "gradient": _search(root, "grad", [0], embedded, strategy="gradient",
                                strategy_options={"steps": 2}),
            "memetic": _search(root, "memetic", [0], embedded, strategy="memetic",
                               strategy_options={"steps": 2, "polish": 1})}


def best(job_dir: Path) -> dict:
    return json.loads((job_dir / "best.json").read_text())


def model_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in MODEL_FILES:
        shutil.copy(Path(EMBEDDED_MODEL) / name, folder / name)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def plain_ppl(model, job_dir: Path, tokenizer) -> float:
    """Perplexity the way any user would compute it: model(ids, labels=ids), full logits."""
    spec = load_job(job_dir / "job.yaml")
    target = best(job_dir)["target_length"]
    docs = load_documents(spec.documents_path, tokenizer, min_tokens=target, k=spec.k_documents,
                          seed=spec.documents_seed, max_tokens=target)
    with torch.no_grad():
        nll = [model(input_ids=d[None], labels=d[None]).loss.item() for d in docs]
    return math.exp(sum(nll) / len(nll))


@pytest.mark.parametrize("search", ["plain", "gradient", "memetic"])
def test_hf_config_reproduces_the_searched_perplexity(jobs, embedded, tmp_path, search):
    job = jobs[search]
    if search == "memetic":  # a polished candidate went back on the grid and was scored
        assert "gradient:polish" in set(pd.read_parquet(job / "generations").operator)
    config = export_job(job, "hf", with_config=True)
    rope = config["rope_parameters"]
    assert rope["rope_type"] == "longrope" and config["max_position_embeddings"] == 512
    assert rope["long_factor"] == pytest.approx(best(job)["lambdas"])
    assert rope["original_max_position_embeddings"] == 128 and rope["short_factor"] == [1.0] * 32
    assert "note" not in config["longrope_search"]  # n̂ = 0: nothing engines lose

    model = AutoModelForCausalLM.from_pretrained(model_folder(tmp_path, config),
                                                 dtype=torch.float32).eval()
    assert model.config.rope_parameters["rope_type"] == "longrope"
    got = plain_ppl(model, job, embedded.tokenizer)
    assert got == pytest.approx(best(job)["search_ppl"], rel=1e-3)
    original = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32).eval()
    unscaled = plain_ppl(original, job, embedded.tokenizer)
    assert abs(unscaled - got) / got > 0.05  # the export is what makes the difference


def test_n_hat_export_states_that_engines_ignore_it(jobs, embedded, tmp_path):
    job = jobs["n_hat"]
    record = best(job)
    assert record["n_hat"] == 8
    hf = export_job(job, "hf", with_config=True)
    info = hf["longrope_search"]
    assert "ignore" in info["note"] and info["n_hat"] == 8
    without = info["ppl_without_n_hat"]
    assert without == pytest.approx(record["search_ppl_without_n_hat"])
    assert not math.isclose(without, record["search_ppl"], rel_tol=1e-4)

    # what an engine gets from the hf export is indeed the perplexity without n̂
    engine = AutoModelForCausalLM.from_pretrained(model_folder(tmp_path, hf),
                                                  dtype=torch.float32).eval()
    assert plain_ppl(engine, job, embedded.tokenizer) == pytest.approx(without, rel=1e-3)
    vllm = export_job(job, "vllm")
    assert vllm["longrope_search"]["ppl_without_n_hat"] == pytest.approx(without)


@pytest.mark.parametrize("fmt", ["longrope", "hf", "vllm"])
def test_apply_factors_reproduces_the_search_n_hat_included(jobs, tmp_path, fmt):
    job = jobs["n_hat"]
    path = tmp_path / f"factors.{fmt}.json"
    path.write_text(json.dumps(export_job(job, fmt)))
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    cand = longrope_search.apply_factors(model, path)
    assert cand.n_hat == 8 and model.config.max_position_embeddings == 512
    assert plain_ppl(model, job, tokenizer) == pytest.approx(best(job)["search_ppl"], rel=1e-3)


def test_vllm_export(jobs):
    job = jobs["plain"]
    out = export_job(job, "vllm")
    scaling = out["rope_scaling"]
    assert out["max_model_len"] == 512 and out["hf_overrides"]["max_position_embeddings"] == 512
    assert scaling["type"] == scaling["rope_type"] == "longrope"
    assert scaling["long_factor"] == pytest.approx(best(job)["lambdas"])
    assert scaling["long_mscale"] == scaling["short_mscale"] == best(job)["attention_factor"]
    assert scaling["original_max_position_embeddings"] == 128
    args = out["cli_args"].split(" ", 3)
    assert args[:3] == ["--max-model-len", "512", "--hf-overrides"]
    assert json.loads(args[3].strip("'")) == out["hf_overrides"]


def test_longrope_record(jobs, embedded):
    job = jobs["n_hat"]
    rec = export_job(job, "longrope")
    b = best(job)
    assert rec["lambdas"] == pytest.approx(b["lambdas"]) and rec["n_hat"] == 8
    assert rec["short_factor"] == [1.0] * 32 and rec["short_factor_from"] is None  # no recovery
    assert (rec["original_length"], rec["target_length"]) == (128, 512)
    assert rec["model"]["config_hash"] == model_fingerprint(embedded.model.config)
    assert rec["perplexity"]["search"]["512"] == pytest.approx(b["search_ppl"])
    assert set(rec["seed_ppl"]) == {"pi", "ntk", "yarn"}
    assert rec["search"]["evolution"]["population"] == 4
    assert rec["documents"]["k"] == 2 and set(rec["versions"]) >= {"torch", "transformers"}


def test_export_of_a_job_that_has_not_finished(tmp_path, jobs):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(jobs["plain"] / "job.yaml", unfinished / "job.yaml")
    with pytest.raises(ConfigError, match="has not finished"):
        export_job(unfinished, "hf")
    with pytest.raises(ConfigError, match="not a job folder"):
        export_job(tmp_path, "hf")
    with pytest.raises(ConfigError, match="format"):
        export_job(jobs["plain"], "gguf")


def _corrupt(record: dict, how: str) -> str:
    if how == "nan":
        record["lambdas"][3] = float("nan")
    elif how == "length":
        record["lambdas"] = record["lambdas"][:-1]
    elif how == "model":
        record["model"]["config_hash"] = "0123456789abcdef"
    elif how == "theta":
        record["rope_theta"] = 500000.0
    elif how == "original":
        record["original_length"] = 4096
    elif how == "json":
        return json.dumps(record)[:-20]
    return json.dumps(record, allow_nan=True)


@pytest.mark.parametrize("how, match", [
    ("nan", "λ\\[3\\] is nan"), ("length", "has 31 values but the model has 32"),
    ("model", "another model"), ("theta", "rope_theta 500000.0"),
    ("original", "original length 4096"), ("json", "not valid JSON"),
])
def test_malformed_or_mismatched_files_are_refused(jobs, tmp_path, how, match):
    path = tmp_path / "bad.json"
    path.write_text(_corrupt(export_job(jobs["plain"], "longrope"), how))
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32)
    before = model.model.rotary_emb
    with pytest.raises(ConfigError, match=match):
        longrope_search.apply_factors(model, path)
    assert model.model.rotary_emb is before  # nothing applied


def test_deliberate_cross_model_application(jobs, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(_corrupt(export_job(jobs["plain"], "longrope"), "model"))
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32)
    longrope_search.apply_factors(model, path, check_model=False)
    assert type(model.model.rotary_emb).__name__ == "RescaledRotaryEmbedding"
