"""Memory and time of one gradient step in λ against the scorer's forward, side by side.

The model is a random-initialised Llama with a 32k vocabulary (as in ``bench_scorer.py``'s
part B); one document of each length, YaRN's factors for that length. A gradient step is one
forward and one backward through the frozen model with activation checkpointing and the chunked
loss (:func:`longrope_search.evaluation.gradient.gradient`); the forward is the scorer's
``score``. Peak memory is measured as in ``bench_scorer.py`` (resident high-water mark above the
level before each run on CPU; CUDA's max_memory_allocated on a GPU).

    python bench/bench_gradient.py --lengths 4096 8192 16384   # → runs/bench_gradient/
"""

from __future__ import annotations

import platform

import torch
from bench_scorer import MiB, measure
from common import add_out, command_line, parser, write_report
from transformers import LlamaConfig, LlamaForCausalLM

from longrope_search.evaluation.gradient import gradient
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import RopeGeometry, seed_candidate


def run(lengths: list[int], device: torch.device, layers: int) -> list[dict]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32_000, hidden_size=256, intermediate_size=688,
                         num_hidden_layers=layers, num_attention_heads=4,
                         max_position_embeddings=4096, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(device).eval()
    g = RopeGeometry.from_config(config)
    rows = []
    for length in lengths:
        doc = torch.randint(0, config.vocab_size, (length,))
        cand = seed_candidate("yarn", g, max(1.0, length / g.original_length))
        scorer = PerplexityScorer(model, g, [doc], length=length, batch_size=1)
        fwd, f_sec, f_mem = measure(lambda s=scorer, c=cand: s.score([c])[0], device)
        grad, g_sec, g_mem = measure(lambda s=scorer, c=cand: gradient(s, c), device)
        rows.append({"length": length, "forward_peak_mib": f_mem / MiB,
                     "gradient_peak_mib": g_mem / MiB, "memory_ratio": g_mem / max(f_mem, 1),
                     "forward_seconds": f_sec, "gradient_seconds": g_sec,
                     "time_ratio": g_sec / f_sec,
                     "nll_agrees": abs(grad.mean_nll - float(fwd.mean_nll)) < 1e-4})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="auto")
    add_out(ap, "runs/bench_gradient/bench_gradient")
    args = ap.parse_args()
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = run(args.lengths, device, args.layers)
    command = command_line()
    lines = ["# Gradient step vs forward: peak memory and time", "", f"Command: `{command}`", "",
             f"Random Llama, 32k vocabulary, hidden 256, {args.layers} layers, fp32, "
             f"{device} ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads). Target: a gradient step's peak memory "
             "within 2× of the forward's at 16k tokens.", "",
             "| tokens | forward peak MiB | gradient peak MiB | ratio | forward s | gradient s | "
             "time ratio | same NLL |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['forward_peak_mib']:.0f} | {r['gradient_peak_mib']:.0f} | "
              f"{r['memory_ratio']:.2f}× | {r['forward_seconds']:.2f} | "
              f"{r['gradient_seconds']:.2f} | {r['time_ratio']:.2f}× | {r['nll_agrees']} |"
              for r in rows]
    write_report(args.out, "\n".join(lines) + "\n", {"rows": rows}, command)


if __name__ == "__main__":
    main()
