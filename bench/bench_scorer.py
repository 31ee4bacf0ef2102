"""Scorer vs the naive baseline, side by side in one process.

Baseline: what a LongRoPE user writes first — ``model(input_ids, labels=input_ids)`` with full
logits, one candidate per forward, fp32 (candidates are applied in place; nothing is reloaded).
Scorer: :class:`PerplexityScorer` with chunked loss, the configured dtype and batching.

Part A — time per candidate, peak memory and perplexity agreement on the embedded model at 8·L.
Part B — peak memory against sequence length for a random-initialised Llama with a 32k vocab.

Peak memory is the process's resident high-water mark above its level before each run (Linux:
the mark is reset through /proc/self/clear_refs), or CUDA's max_memory_allocated on a GPU.

    python bench/bench_scorer.py            # writes runs/bench_scorer/bench_scorer.{md,json}
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import add_out, command_line, parser, write_report
from transformers import LlamaConfig, LlamaForCausalLM

from longrope_search.defaults import EMBEDDED_HELDOUT_DOCS, EMBEDDED_MODEL
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.model import apply_candidates, load_model
from longrope_search.rope import RopeGeometry, seed_candidate

MiB = 2**20


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak extra bytes) of ``fn()``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _rss_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else _rss_bytes("VmHWM"))
    return out, seconds, max(0, peak - base)


def baseline_ppl(model, docs: list[torch.Tensor]) -> float:
    """Mean over documents of HF's own loss, full logits, one document per forward."""
    losses = []
    with torch.no_grad():
        for d in docs:
            ids = d[None].to(model.device)
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    return math.exp(sum(losses) / len(losses))


def part_a(args: argparse.Namespace) -> dict:
    fast = load_model(EMBEDDED_MODEL, dtype=args.dtype, device=args.device)
    slow = load_model(EMBEDDED_MODEL, dtype="float32", device=args.device)
    g: RopeGeometry = fast.geometry
    length = 8 * g.original_length
    docs = load_documents(EMBEDDED_HELDOUT_DOCS, fast.tokenizer, min_tokens=length, k=args.docs,
                          seed=0, max_tokens=length)
    cands = [seed_candidate(m, g, 8.0) for m in ("pi", "ntk", "yarn", "none")]
    dev = fast.device
    scorers = {f"scorer {fast.dtype} batch {b}": PerplexityScorer(
        fast.model, g, docs, length=length, batch_size=b) for b in args.batch_sizes}
    scorers["scorer float32 batch 1"] = PerplexityScorer(slow.model, g, docs, length=length,
                                                         batch_size=1)

    def run_baseline() -> list[float]:
        out = []
        for c in cands:
            apply_candidates(slow.model, c, g)
            out.append(baseline_ppl(slow.model, docs))
        return out

    runs: dict[str, dict[str, list]] = {}
    ppl: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, fn in [("baseline float32 full logits", run_baseline)] + [
            (n, lambda s=s: [r.ppl for r in s.score(cands)]) for n, s in scorers.items()
        ]:
            out, sec, mem = measure(fn, dev)
            runs.setdefault(name, {"seconds": [], "peak": []})
            runs[name]["seconds"].append(sec / len(cands))
            runs[name]["peak"].append(mem)
            ppl[name] = out
    base = runs["baseline float32 full logits"]
    base_sec = statistics.median(base["seconds"])
    rows = []
    for name, r in runs.items():
        sec = statistics.median(r["seconds"])
        rel = max(abs(a - b) / b for a, b in zip(ppl[name], ppl["baseline float32 full logits"],
                                                strict=True))
        rows.append({"variant": name, "seconds_per_candidate": sec, "speedup": base_sec / sec,
                     "peak_mib": max(r["peak"]) / MiB, "max_rel_ppl_diff": rel,
                     "ppl": dict(zip([c.name for c in cands], ppl[name], strict=True))})
    return {"length": length, "documents": len(docs), "candidates": len(cands), "rows": rows}


def part_b(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32_000, hidden_size=256, intermediate_size=688,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=4096,
                         attn_implementation="sdpa")
    dev = torch.device(args.device if args.device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    model = LlamaForCausalLM(config).to(dev).eval()
    g = RopeGeometry.from_config(config)
    rows = []
    for length in args.lengths:
        doc = torch.randint(0, config.vocab_size, (length,))
        cand = seed_candidate("yarn", g, max(1.0, length / g.original_length))
        scorer = PerplexityScorer(model, g, [doc], length=length, batch_size=1)
        apply_candidates(model, cand, g)
        b_ppl, b_sec, b_mem = measure(lambda d=doc: baseline_ppl(model, [d]), dev)
        s_res, s_sec, s_mem = measure(lambda s=scorer, c=cand: s.score([c])[0].ppl, dev)
        rows.append({"length": length, "baseline_peak_mib": b_mem / MiB,
                     "scorer_peak_mib": s_mem / MiB, "memory_ratio": b_mem / max(s_mem, 1),
                     "baseline_seconds": b_sec, "scorer_seconds": s_sec,
                     "full_logits_mib": length * config.vocab_size * 4 / MiB,
                     "rel_ppl_diff": abs(s_res - b_ppl) / b_ppl})
    return {"vocab": config.vocab_size, "dtype": "float32 (both)", "rows": rows}


def report(a: dict, b: dict, args: argparse.Namespace, device: str) -> str:
    lines = [
        "# Scorer benchmark", "",
        f"Command: `{command_line()}`",
        f"Machine: {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}.", "",
        f"## A. Embedded model at 8·L = {a['length']} tokens, {a['documents']} documents, "
        f"{a['candidates']} candidates (PI, NTK, YaRN, none)", "",
        f"Median of {args.repeats} interleaved runs; speed-up is against the baseline.", "",
        "| variant | s / candidate | speed-up | peak extra MiB | max rel. ppl diff |",
        "|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        lines.append(f"| {r['variant']} | {r['seconds_per_candidate']:.3f} | "
                     f"{r['speedup']:.2f}× | {r['peak_mib']:.0f} | {r['max_rel_ppl_diff']:.1e} |")
    lines += ["", f"## B. Peak memory vs length, random Llama, vocab {b['vocab']}, "
              "both in float32", "",
              "| tokens | full logits MiB | baseline peak MiB | scorer peak MiB | ratio | "
              "baseline s | scorer s | rel. ppl diff |", "|---|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        lines.append(f"| {r['length']} | {r['full_logits_mib']:.0f} | "
                     f"{r['baseline_peak_mib']:.0f} | {r['scorer_peak_mib']:.0f} | "
                     f"{r['memory_ratio']:.1f}× | {r['baseline_seconds']:.2f} | "
                     f"{r['scorer_seconds']:.2f} | {r['rel_ppl_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--dtype", default="auto", help="scorer dtype (baseline is always float32)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    add_out(ap, "runs/bench_scorer", folder=True)
    args = ap.parse_args()
    a = part_a(args)
    b = part_b(args)
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    text = report(a, b, args, device)
    print(text)
    name = "bench_scorer" if not torch.cuda.is_available() else "bench_scorer_gpu"
    write_report(args.out / name, text, {"device": device, "part_a": a, "part_b": b},
                 command_line())


if __name__ == "__main__":
    main()
