"""Exports load in plain transformers and reproduce the searched perplexity; bad files are refused.

Two real (tiny, fp32) searches of the embedded model: one restricted to n̂ = 0, one to n̂ = 8.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import gguf
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import longrope_search
from longrope_search.defaults import EMBEDDED_MODEL
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.export import export_job
from longrope_search.gguf_export import export_gguf
from longrope_search.model.identity import model_fingerprint
from longrope_search.search.job import job_from_dict, load_job
from longrope_search.search.run import run_search

MODEL_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _search(root: Path, name: str, n_hat: list[int], loaded, **more) -> Path:
    spec = job_from_dict({
        "name": name, "extension_ratio": 4, "k_documents": 2, "results_dir": str(root),
        "scoring": {"dtype": "float32", "device": "cpu"}, "space": {"n_hat": n_hat},
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}, **more})
    return run_search(spec, loaded=loaded, progress=False).job_dir


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, embedded):
    root = tmp_path_factory.mktemp("jobs")
    return {"plain": _search(root, "plain", [0], embedded),
            "n_hat": _search(root, "nhat", [8], embedded, deploy="python"),
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
    # one set: a Llama in transformers would mix short- and long-rotated keys in its cache
    assert rope["original_max_position_embeddings"] == 128
    assert rope["short_factor"] == rope["long_factor"]
    info = config["longrope_search"]
    assert "note" not in info  # n̂ = 0: nothing engines lose
    assert info["searched_for"] == "transformers" and "transformers" in info["exported_for"]
    assert "short_factor = long_factor" in info["notes"][0]

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
    assert rec["search"]["search"]["population"] == 4
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


# -- GGUF out: the job's factors in a copy of a GGUF model, everything else byte for byte --

Q8 = gguf.GGMLQuantizationType.Q8_0


def write_model(path: Path, arch: str = "llama", pairs: int = 32) -> Path:
    """A small GGUF as converters write them: keys of every kind, an f32, a q8_0 and an f16
    tensor (and, for phi3, factor tables to be replaced)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_rope_dimension_count(2 * pairs)
    w.add_rope_freq_base(10_000.0)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.5])
    w.add_tensor("token_embd.weight", rng.normal(size=(8, 16)).astype(np.float32))
    q = gguf.quants.quantize(rng.normal(size=(4, 64)).astype(np.float32), Q8)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=Q8)
    w.add_tensor("output_norm.weight", rng.normal(size=16).astype(np.float16))
    if arch == "phi3":
        for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            w.add_tensor(name, np.ones(pairs, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    return {t.name: (int(t.tensor_type), t.data.tobytes())
            for t in gguf.GGUFReader(path).tensors}


def fields(path: Path) -> dict[str, object]:
    return {f.name: f.contents() for f in gguf.GGUFReader(path).fields.values()
            if not f.name.startswith("GGUF.")}


def test_the_factor_table_and_keys_are_set_and_everything_else_is_copied(jobs, tmp_path):
    job = jobs["plain"]
    model = write_model(tmp_path / "in.gguf")
    out = tmp_path / "out.gguf"
    notes = export_gguf(job, model, out)  # n̂ = 0, no short factors: nothing lost
    assert notes == ["searched for deploy: transformers, exported as gguf for llamacpp: both "
                     "apply the same factors at every length to this model, so the job's "
                     "results by length hold"]
    b, before, after = best(job), tensors(model), tensors(out)
    assert set(after) == set(before) | {"rope_freqs.weight"}
    for name, (kind, data) in before.items():
        assert after[name] == (kind, data), name  # the q8_0 tensor too, byte for byte
    kind, data = after["rope_freqs.weight"]
    assert kind == int(gguf.GGMLQuantizationType.F32)
    assert np.frombuffer(data, dtype=np.float32) == pytest.approx(b["lambdas"], rel=1e-6)
    keys = fields(out)
    assert keys["llama.context_length"] == b["target_length"] == 512
    assert keys["llama.rope.scaling.original_context_length"] == 128
    assert keys["llama.rope.scaling.attn_factor"] == pytest.approx(b["attention_factor"])
    assert keys["llama.rope.scaling.type"] == "none"  # no linear scale on top of the table
    assert "llama.rope.scaling.factor" not in keys
    old = fields(model)
    for name in ("general.name", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                 "llama.rope.freq_base", "llama.rope.dimension_count"):
        assert keys[name] == old[name]


def test_phi3_gets_both_tables_and_n_hat_is_noted(jobs, tmp_path):
    job = jobs["n_hat"]
    model = write_model(tmp_path / "phi3.gguf", arch="phi3")
    out = tmp_path / "out.gguf"
    notes = export_gguf(job, model, out)
    assert len(notes) == 2 and "n_hat = 8" in notes[0]  # llama.cpp rescales every position
    assert "searched for deploy: python, exported as gguf for llamacpp" in notes[1]
    assert "n̂ = 8 is applied by one of them only" in notes[1]
    after = tensors(out)
    long = np.frombuffer(after["rope_factors_long.weight"][1], dtype=np.float32)
    short = np.frombuffer(after["rope_factors_short.weight"][1], dtype=np.float32)
    assert long == pytest.approx(best(job)["lambdas"], rel=1e-6)
    assert np.all(short == 1.0)  # no recovery job: ones
    assert "rope_freqs.weight" not in after


def test_a_file_of_another_model_is_refused(jobs, tmp_path):
    with pytest.raises(ConfigError, match="16 pairs"):
        export_gguf(jobs["plain"], write_model(tmp_path / "m.gguf", pairs=16),
                    tmp_path / "out.gguf")
    with pytest.raises(ConfigError, match="gguf"):
        export_gguf(jobs["plain"], tmp_path / "missing.gguf", tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_the_cli_writes_a_gguf_export(jobs, tmp_path, capsys):
    from longrope_search.cli import main

    job = jobs["n_hat"]
    model = write_model(tmp_path / "in.gguf")
    out = tmp_path / "out.gguf"
    assert main(["export", job.name, "--results-dir", str(job.parent), "--format", "gguf",
                 "--gguf", str(model), "-o", str(out)]) == 0
    assert "n_hat = 8" in capsys.readouterr().err  # what llama.cpp will not do
    data = np.frombuffer(tensors(out)["rope_freqs.weight"][1], dtype=np.float32)
    assert data == pytest.approx(best(job)["lambdas"], rel=1e-6)
    assert main(["export", job.name, "--results-dir", str(job.parent), "--format", "gguf"]) != 0
    assert "-o OUT.gguf" in capsys.readouterr().err
    assert main(["export", job.name, "--results-dir", str(job.parent), "--format", "gguf",
                 "-o", str(tmp_path / "x.gguf")]) != 0  # its model is a folder: which GGUF?
    assert "--gguf IN.gguf" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


# -- generation across L: what the KV cache holds must be what one forward computes --

PROMPT, END = 100, 400  # a prompt shorter than L = 128, decoded token by token past 3·L


def _decoding_losses(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses of positions PROMPT..END−1: decoded one token at a time from a cached
    prompt (what generate() does), and from one forward over the same tokens."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :PROMPT], use_cache=True)
        past, logits = out.past_key_values, [out.logits[:, -1]]
        for t in range(PROMPT, END - 1):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits[:, -1])
        cached = torch.stack(logits, dim=1)[0]  # predicts tokens PROMPT..END−1
        whole = model(input_ids=ids[:, :END]).logits[0, PROMPT - 1 : END - 1]
    target = ids[0, PROMPT:END]
    loss = torch.nn.functional.cross_entropy
    return loss(cached, target, reduction="none"), loss(whole, target, reduction="none")


def _document(job: Path, tokenizer) -> torch.Tensor:
    spec = load_job(job / "job.yaml")
    return load_documents(spec.documents_path, tokenizer, min_tokens=END, k=1,
                          max_tokens=END)[0][None]


def test_cached_decoding_across_L_through_the_hf_export_matches_one_forward(
        jobs, embedded, tmp_path):
    job = jobs["plain"]
    config = export_job(job, "hf", with_config=True)
    model = AutoModelForCausalLM.from_pretrained(model_folder(tmp_path, config),
                                                 dtype=torch.float32).eval()
    cached, whole = _decoding_losses(model, _document(job, embedded.tokenizer))
    assert torch.allclose(cached, whole, atol=2e-4, rtol=1e-4)

    # the export of before: short_factor ones, which transformers applies to the prompt
    config["rope_parameters"]["short_factor"] = [1.0] * 32
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    mixed = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    cached, whole = _decoding_losses(mixed, _document(job, embedded.tokenizer))
    assert cached.mean() > 1.05 * whole.mean()  # keys and queries rotated by other factors


@pytest.mark.parametrize("search", ["plain", "n_hat"])
def test_cached_decoding_across_L_through_apply_factors_matches_one_forward(
        jobs, embedded, tmp_path, search):
    job = jobs[search]
    path = tmp_path / "factors.json"
    path.write_text(json.dumps(export_job(job, "longrope")))
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32).eval()
    assert longrope_search.apply_factors(model, path).n_hat == best(job)["n_hat"]
    cached, whole = _decoding_losses(model, _document(job, embedded.tokenizer))
    assert torch.allclose(cached, whole, atol=2e-4, rtol=1e-4)
