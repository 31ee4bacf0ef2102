"""The paths a model on GPUs takes, exercised on this CPU machine: accelerate's device hooks
(one model over several GPUs), where the gradient's λ and m live, device and dtype choices."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from accelerate import dispatch_model
from accelerate.hooks import AlignDevicesHook

from longrope_search.cli import main
from longrope_search.defaults import EMBEDDED_HELDOUT_DOCS, EMBEDDED_MODEL, EMBEDDED_SEARCH_DOCS
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.gradient import gradient, step_forwards
from longrope_search.evaluation.perplexity import PerplexityScorer, accumulator_dtype, batch_for
from longrope_search.model import apply_candidates, load_model, restore_rope
from longrope_search.model.loading import (
    attention_window,
    enable_tf32,
    resolve_dtype,
)
from longrope_search.model.patch import find_rotary_embedding
from longrope_search.rope import seed_candidate
from longrope_search.search.evaluator import gradient_step, load_job_model, score_batch
from longrope_search.search.job import job_from_dict, load_job
from longrope_search.search.run import check_job, run_search
from workers.scorer import check_placement, placement

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "extension_ratio": 4, "k_documents": 2,
        "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                      "generations": 1}}

# what device_map="auto" does over several GPUs, on what this machine has: every module gets
# accelerate's AlignDevicesHook, the head is offloaded
SPREAD = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu",
          "model.rotary_emb": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def documents(embedded):
    return load_documents(embedded.path / "documents" / "search", embedded.tokenizer,
                          min_tokens=256, k=2, max_tokens=256)


@pytest.fixture(scope="module")
def dispatched(embedded, tmp_path_factory):
    loaded = load_model(embedded.path, dtype="float32", device="cpu")
    dispatch_model(loaded.model, device_map=SPREAD,
                   offload_dir=str(tmp_path_factory.mktemp("offload")))
    return loaded


def test_the_rescaled_rotary_module_keeps_accelerates_device_hook(dispatched, embedded,
                                                                  documents) -> None:
    """With layers spread over GPUs, transformers' rotary module sits on the last GPU and
    accelerate's hook moves its inputs there; the swap must keep that placement."""
    _, original = find_rotary_embedding(dispatched.model)
    placed = original._hf_hook.execution_device
    yarn = seed_candidate("yarn", embedded.geometry, 2.0)
    module = apply_candidates(dispatched.model, yarn)
    assert isinstance(module._hf_hook, AlignDevicesHook)
    assert module._hf_hook.execution_device == placed and not module._hf_hook.offload
    a, b = (PerplexityScorer(m.model, m.geometry, documents, length=256).score([yarn])[0].ppl
            for m in (embedded, dispatched))
    assert a == pytest.approx(b, rel=1e-6)
    restore_rope(dispatched.model)
    assert find_rotary_embedding(dispatched.model)[1]._hf_hook is original._hf_hook


def test_the_gradients_lambdas_live_beside_the_rotary_buffers(embedded, documents) -> None:
    """The first parameter (the embeddings, GPU 0) is not where the rotary module computes
    (the last GPU): λ and m are created on the rotary buffers' device."""
    scorer = PerplexityScorer(embedded.model, embedded.geometry, documents, length=256)
    expected = gradient(scorer, seed_candidate("yarn", embedded.geometry, 2.0))
    scorer.device = torch.device("meta")  # where the first parameter would be
    got = gradient(scorer, seed_candidate("yarn", embedded.geometry, 2.0))
    torch.testing.assert_close(torch.tensor(got.lambdas), torch.tensor(expected.lambdas))


# -- item 2: a worker's GPUs and the spec's device ---------------------------------------------
@pytest.mark.parametrize("device, gpus, expected", [
    ("auto", [], ("cpu", None)),
    ("auto", [0], ("auto", None)),
    ("cuda", [0], ("cuda", None)),
    ("auto", [0, 1], ("auto", "auto")),
    ("cuda", [0, 1], ("cuda", "auto")),  # the shipped 7B configs say cuda
])
def test_a_worker_with_several_gpus_spreads_its_model(device, gpus, expected) -> None:
    assert placement(device, gpus) == expected


@pytest.mark.parametrize("device", ["cpu", "cuda:1", "mps"])
def test_a_device_that_denies_a_workers_gpus_is_refused(device) -> None:
    with pytest.raises(ConfigError, match=r"^scoring.device: .* each worker gets 2 GPUs"):
        check_placement(device, 2)
    check_placement(device, 1)  # one GPU: the device is the user's choice


def test_run_refuses_a_device_that_cannot_use_the_workers_gpus(tmp_path, capsys) -> None:
    import ray

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TINY, "scoring": {"device": "cpu"}}))
    rc = main(["run", str(config), "--ray", "--workers", "1", "--gpus-per-worker", "2",
               "--results-dir", str(tmp_path)])
    assert rc == 2 and capsys.readouterr().err.startswith("error: scoring.device")
    assert not ray.is_initialized()  # refused before Ray started
    assert not (tmp_path / TINY["name"]).exists()


# -- item 3: sliding-window models -------------------------------------------------------------
@pytest.fixture(scope="module")
def windowed(tmp_path_factory) -> Path:
    """The embedded weights as a Mistral whose every layer attends within 64 tokens."""
    folder = tmp_path_factory.mktemp("mistral") / "windowed"
    shutil.copytree(EMBEDDED_MODEL, folder, ignore=shutil.ignore_patterns("documents"))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=64)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("config, window", [
    ({"model_type": "mistral", "sliding_window": 4096}, 4096),
    ({"model_type": "mistral", "sliding_window": None}, None),
    ({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}, None),
    ({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": True,
      "max_window_layers": 1, "num_hidden_layers": 2}, None),  # layer 0 attends to everything
    ({"model_type": "phi3", "sliding_window": 2047}, 2047),
    ({"model_type": "llama"}, None),
])
def test_the_window_every_layer_attends_within(config, window) -> None:
    from transformers import AutoConfig

    model_type = config.pop("model_type")
    assert attention_window(AutoConfig.for_model(model_type, **config)) == window


def window_job(tmp_path: Path, model: Path, **over) -> dict:
    return {**TINY, "model": str(model), "documents": str(EMBEDDED_SEARCH_DOCS),
            "heldout_documents": str(EMBEDDED_HELDOUT_DOCS), **over}


def test_a_sliding_window_model_is_refused_before_its_weights_load(windowed, tmp_path,
                                                                    capsys) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(window_job(tmp_path, windowed)))
    assert main(["run", str(config), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model: windowed attends only to the last 64 tokens")
    assert "remove_sliding_window: true" in err and not (tmp_path / TINY["name"]).exists()


def test_the_service_refuses_a_sliding_window_model(windowed, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from longrope_search.service.app import create_app
    from longrope_search.service.jobs import JobManager
    from longrope_search.service.runners import local_runner

    manager = JobManager(tmp_path / "runs", local_runner(), data_roots=[windowed.parent,
                                                                         EMBEDDED_MODEL])
    try:
        r = TestClient(create_app(manager)).post("/api/jobs", json=window_job(tmp_path,
                                                                              windowed))
        assert r.status_code == 422 and r.json()["field"] == "model", r.text
    finally:
        manager.close()


def test_remove_sliding_window_scores_with_full_attention(windowed, tmp_path, capsys) -> None:
    """The option really removes the window (the windowed model scores otherwise at 4L), and
    the job runs, saying so."""
    spec = job_from_dict({**window_job(tmp_path, windowed, remove_sliding_window=True),
                          "results_dir": str(tmp_path)})
    full = load_job_model(spec)
    assert full.model.config.sliding_window is None
    kept = load_model(windowed, dtype="float32", device="cpu")
    assert kept.model.config.sliding_window == 64
    docs = load_documents(EMBEDDED_SEARCH_DOCS, full.tokenizer, min_tokens=512, k=1,
                          max_tokens=512)
    yarn = seed_candidate("yarn", full.geometry, 4.0)
    a, b = (PerplexityScorer(m.model, m.geometry, docs, length=512).score([yarn])[0].ppl
            for m in (full, kept))
    assert a != pytest.approx(b, rel=1e-3)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(window_job(tmp_path, windowed, remove_sliding_window=True)))
    assert main(["run", str(config), "--results-dir", str(tmp_path), "--no-progress"]) == 0
    assert "sliding window of 64 tokens is removed" in capsys.readouterr().err


def test_the_shipped_7b_configs_name_no_windowed_model_and_can_spread() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        spec = load_job(path)
        assert spec.scoring.device in ("auto", "cuda"), path.name  # --gpus-per-worker 2 works
    # the windowed models named: Mistral-7B-v0.1 (4096), Phi-3-mini-4k (2047)
    assert "v0.1" not in load_job(ROOT / "configs" / "mistral-7b-v0.2-128k.yaml").model
    assert load_job(ROOT / "configs" / "phi3-mini-32k.yaml").remove_sliding_window


# -- item 5: the attention kernel (one Literal, dtypes.AttnImplementation) ---------------------

def test_eager_attention_reaches_the_loaded_model(tmp_path) -> None:
    spec = job_from_dict({**TINY, "results_dir": str(tmp_path),
                          "scoring": {"attn_implementation": "eager", "dtype": "float32"}})
    assert load_job_model(spec).model.config._attn_implementation == "eager"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None,
                    reason="flash-attn is installed")
def test_flash_attention_without_its_package_is_refused(tmp_path, capsys) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TINY, "scoring": {"attn_implementation":
                                                          "flash_attention_2"}}))
    assert main(["run", str(config), "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: scoring.attn_implementation: "
                                              "flash_attention_2 needs the flash-attn")
    assert main(["eval", "--attn-implementation", "flash_attention_2"]) == 2
    assert main(["passkey", "--attn-implementation", "nope"]) == 2
    assert "unknown attention implementation 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^scoring\.attn_implementation"):
        check_job(job_from_dict({**TINY, "scoring": {"attn_implementation":
                                                     "flash_attention_2"}}))


# -- item 6: out of memory ---------------------------------------------------------------------
def run_out_of_memory(scorer: PerplexityScorer, rows: int,
                      always: frozenset = frozenset()) -> list[int]:
    """Make the scorer's forwards run out of memory with more than ``rows`` candidates, or
    for the candidates named ``always``: what a GPU does, on this CPU. Returns the batch
    sizes tried, as they are tried."""
    real, batches = scorer.score_groups, []

    def score_groups(candidates, index):
        batches.append(len(candidates))
        if len(candidates) > rows or any(c.name in always for c in candidates):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return real(candidates, index)

    scorer.score_groups = score_groups
    return batches


def oom_work(geometry) -> list:
    from longrope_search.search.space import Genome
    from longrope_search.search.trial import Individual

    return [(Individual(Genome(np.arange(4) + i, 0), 0, "mutation"),
             seed_candidate(m, geometry, 2.0).with_(name=m), None)
            for i, m in enumerate(("pi", "ntk", "yarn"))]


def test_out_of_memory_retries_each_candidate_alone(embedded, documents) -> None:
    scorer = PerplexityScorer(embedded.model, embedded.geometry, documents, length=256,
                              batch_size=3)
    work = oom_work(embedded.geometry)
    expected = score_batch(scorer, work, "w")
    batches = run_out_of_memory(scorer, rows=1)
    got = score_batch(scorer, work, "w")
    assert batches[0] == 3 and set(batches[1:]) == {1}
    assert [(i.key, e.status, e.nll) for i, e in got] == [
        (i.key, e.status, e.nll) for i, e in expected]
    assert all(e.status == "ok" for _, e in got)


def test_only_a_candidate_out_of_memory_alone_fails_with_the_message(embedded,
                                                                     documents) -> None:
    scorer = PerplexityScorer(embedded.model, embedded.geometry, documents, length=256,
                              batch_size=3)
    run_out_of_memory(scorer, rows=1, always=frozenset({"ntk"}))
    got = {cand_key: ev for cand_key, ev in ((i.key, e) for i, e in
                                               score_batch(scorer, oom_work(embedded.geometry),
                                                           "w"))}
    statuses = sorted(e.status for e in got.values())
    assert statuses == ["failed", "ok", "ok"]
    (failed,) = [e for e in got.values() if e.status == "failed"]
    assert failed.extra["error"].startswith("OutOfMemoryError: CUDA out of memory")


def test_the_ledger_keeps_the_out_of_memory_message(tmp_path, embedded, monkeypatch) -> None:
    """Through a whole search: the failed candidate's record says why."""
    import longrope_search.search.evaluator as evaluator

    real = evaluator._score_together

    def yarn_runs_out(scorer, work, worker):  # batched with another candidate or alone
        if any(ind.operator == "seed:yarn" for ind, _, _ in work):
            raise evaluator._OutOfMemory([], list(work), "OutOfMemoryError: CUDA out of memory")
        return real(scorer, work, worker)

    monkeypatch.setattr(evaluator, "_score_together", yarn_runs_out)
    s = job_from_dict({**TINY, "results_dir": str(tmp_path),
                       "scoring": {"dtype": "float32", "batch_size": 2}})
    run_search(s, loaded=embedded, progress=False)
    gens = pd.read_parquet(tmp_path / TINY["name"] / "generations")
    row = gens[gens.operator == "seed:yarn"].iloc[0]
    assert row.status == "failed"
    assert (gens[gens.operator == "seed:ntk"].status == "ok").all()  # its batch partner
    ledger = (tmp_path / TINY["name"] / "ledger.journal").read_text()
    assert "OutOfMemoryError: CUDA out of memory" in ledger


# -- item 7: batch_size auto on a GPU ----------------------------------------------------------
def llama_7b():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)


@pytest.mark.parametrize("tokens", [8192, 32768, 65536])
def test_auto_batch_is_one_row_on_a_gpu_at_long_lengths(tokens) -> None:
    assert batch_for(torch.device("cuda"), tokens, 120 * 2**30, llama_7b(), 2) == 1


def test_auto_batch_fills_a_gpu_at_short_lengths() -> None:
    assert batch_for(torch.device("cuda"), 1024, 120 * 2**30, llama_7b(), 2) == 8
    assert batch_for(torch.device("cuda"), 1024, 2**30, llama_7b(), 2) == 1  # no room
    assert batch_for(torch.device("cpu"), 1024, 120 * 2**30, llama_7b(), 2) == 1


# -- item 8: weights load straight onto the device ---------------------------------------------
def test_weights_load_straight_onto_the_device(monkeypatch) -> None:
    from longrope_search.model.source import ModelSource

    seen = []
    real = ModelSource.model

    def spy(self, trust_remote_code=False, **kwargs):
        seen.append(kwargs["device_map"])
        return real(self, trust_remote_code, **kwargs)

    monkeypatch.setattr(ModelSource, "model", spy)
    loaded = load_model(EMBEDDED_MODEL, dtype="float32", device="cpu")
    assert seen == [{"": torch.device("cpu")}] and loaded.device == torch.device("cpu")
    load_model(EMBEDDED_MODEL, dtype="float32", device="cpu", device_map="auto")
    assert seen[-1] == "auto"


# -- item 9: what a gradient step costs --------------------------------------------------------
def test_a_gradient_step_on_a_gpu_costs_its_flops(embedded) -> None:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # 7B shapes, no memory
        model = LlamaForCausalLM(llama_7b())
    at = {t: step_forwards(model, t, torch.device("cuda")) for t in (4096, 32768, 65536)}
    assert 3.0 < at[4096] < at[32768] < at[65536] < 3 + 1.5  # attention's share grows with T
    assert at[32768] == pytest.approx(3.58, abs=0.02)  # the docstring's figure
    assert step_forwards(model, 32768, torch.device("cpu")) == 3.0  # measured there


def test_a_gradient_steps_record_has_its_cost_and_seconds(embedded, documents) -> None:
    from longrope_search.search.space import Genome
    from longrope_search.search.trial import GRADIENT, Individual

    scorer = PerplexityScorer(embedded.model, embedded.geometry, documents, length=256)
    ind = Individual(Genome(np.arange(4), 0), 0, "descent", task=GRADIENT)
    _, ev = gradient_step(scorer, ind, seed_candidate("yarn", embedded.geometry, 2.0), "w")
    assert ev.extra["step_forwards"] == 3.0 and ev.extra["seconds"] > 0
    assert ev.cost_tokens == 3 * sum(scorer.forward_tokens)


# -- item 10: dtypes by device -----------------------------------------------------------------
@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_is_bf16_only_where_a_gpu_computes_it(monkeypatch, capability, dtype) -> None:
    """V100 (7.0) and T4 (7.5) report bf16 as supported (emulated): fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert resolve_dtype("auto", torch.device("cuda")) == dtype


@pytest.fixture
def fp32_precision():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.fp32_precision, cudnn.fp32_precision
    matmul.fp32_precision = cudnn.fp32_precision = "ieee"
    yield matmul, cudnn
    matmul.fp32_precision, cudnn.fp32_precision = saved


def test_fp32_on_a_gpu_uses_tf32(fp32_precision) -> None:
    matmul, cudnn = fp32_precision
    enable_tf32(torch.device("cpu"), torch.float32)
    enable_tf32(torch.device("cuda"), torch.bfloat16)
    assert matmul.fp32_precision == "ieee"
    enable_tf32(torch.device("cuda"), torch.float32)
    assert matmul.fp32_precision == cudnn.fp32_precision == "tf32"


def test_losses_sum_in_a_dtype_mps_has() -> None:
    assert accumulator_dtype(torch.device("mps")) == torch.float32
    assert accumulator_dtype(torch.device("cuda")) == torch.float64
