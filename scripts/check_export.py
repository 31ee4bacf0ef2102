"""Check a finished job's exports in the engines that load them.

``hf``: plain transformers, as an inference user would load them. Perplexity by length on the
job's comparison documents (held-out when it names them; plain ``model(ids, labels=ids)``, full
logits) of the model folder whose config.json is the job's ``hf --config`` export (what engines
get: no n̂), against the job's comparison (``comparison.json``), and of the original model with
``longrope_search.apply_factors`` on the ``longrope`` export.

    longrope-search export JOB --format hf --config -o MODEL_COPY/config.json
    longrope-search export JOB --format longrope -o JOB.longrope.json
    python scripts/check_export.py hf runs/JOB MODEL_COPY JOB.longrope.json

``gguf``: llama.cpp (llama-cpp-python). Exports the job into a copy of the model's GGUF and
compares the factors' gain over YaRN inside llama.cpp with the gain in the search's scorer
(``longrope_search.llamacpp.check``); exits 1 when they differ by more than the tolerance.

    python scripts/check_export.py gguf runs/JOB MODEL.gguf -o JOB.gguf --json report.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import longrope_search
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir


def check_hf(args: argparse.Namespace) -> int:
    """Perplexity by length of the exported config through plain from_pretrained, against
    the job's comparison (its ``best`` row, the searched factors as the job's engine applies
    them); exits 1 when a length differs by more than ``--tolerance`` percent."""
    job = JobDir(args.job_dir)
    best = job.finished_best()
    spec = load_job(job.spec)
    comparison = job.read_comparison() or {}
    rows = {r["method"]: r for r in comparison.get("rows", [])}
    lengths = comparison.get("lengths") or [best["target_length"]]
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    docs = load_documents(spec.comparison_path, tokenizer, min_tokens=max(lengths),
                          k=spec.k_documents, seed=spec.documents_seed, max_tokens=max(lengths))

    def ppl(model: torch.nn.Module, n: int) -> float:
        with torch.no_grad():
            nll = [model(input_ids=d[None, :n], labels=d[None, :n]).loss.item() for d in docs]
        return math.exp(sum(nll) / len(nll))

    def load(folder: Path) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    exported, original = load(args.exported_model), load(spec.model_path)
    longrope_search.apply_factors(original, args.factors)
    print(f"n_hat {best['n_hat']} (deploy: {best.get('deploy', 'transformers')}); "
          f"{len(docs)} documents of {spec.comparison_path}")
    print(f"{'tokens':>8}{'from_pretrained':>17}{'comparison':>12}{'diff %':>9}"
          f"{'apply_factors':>15}")
    worst = 0.0
    for n in lengths:
        got = ppl(exported, n)
        want = rows.get("best", {}).get("ppl_by_length", {}).get(str(n))
        diff = 100 * abs(got / want - 1) if want else float("nan")
        worst = max(worst, diff) if want else worst
        print(f"{n:>8}{got:>17.4f}{want or float('nan'):>12.4f}{diff:>9.3f}"
              f"{ppl(original, n):>15.4f}")
    print(f"largest difference {worst:.3f}% (tolerance {args.tolerance}%)")
    return 0 if worst <= args.tolerance else 1


def check_gguf(args: argparse.Namespace) -> int:
    from longrope_search.io import write_json
    from longrope_search.llamacpp.check import check_gguf_export
    from longrope_search.llamacpp.perplexity import require_llama_cpp

    require_llama_cpp()  # before anything is read or written
    report = check_gguf_export(args.job_dir, args.gguf, args.output,
                               tolerance=args.tolerance, threads=args.threads)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{'':<10}{'llama.cpp':>12}{'search':>12}")
    for name, key in (("unscaled", "none"), ("YaRN", "yarn"), ("factors", "factors")):
        print(f"{name:<10}{report['llama.cpp'][key]:>12.4f}{report['transformers'][key]:>12.4f}")
    print(f"\nthe export by length (context {report['target_length']}):\n"
          f"{'tokens':>8}{'llama.cpp':>12}{'search':>12}{'comparison':>12}{'diff %':>9}")
    for n, r in report["by_length"].items():
        print(f"{n:>8}{r['llama.cpp']:>12.4f}{r['transformers']:>12.4f}"
              f"{r['comparison'] or float('nan'):>12.4f}{r['difference_pct']:>9.3f}")
    gain = report["gain_over_yarn_pct"]
    print(f"gain over YaRN: llama.cpp {gain['llama.cpp']:+.2f}%, search {gain['search']:+.2f}% "
          f"({report['difference_pp']:.2f} points apart, tolerance {args.tolerance})")
    if args.json:
        write_json(args.json, report)
    return 0 if report["agrees"] else 1


def main() -> int:
    from longrope_search.llamacpp.check import TOLERANCE_PP

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="engine", required=True)
    hf = sub.add_parser("hf", help="plain transformers")
    hf.add_argument("job_dir", type=Path)
    hf.add_argument("exported_model", type=Path, help="model folder with the exported config")
    hf.add_argument("factors", type=Path, help="the job's longrope export")
    hf.add_argument("--tolerance", type=float, default=1.0,
                    help="largest difference from the comparison, in percent (the job may "
                         "have scored in bf16; this check runs in fp32)")
    hf.set_defaults(run=check_hf)
    gg = sub.add_parser("gguf", help="llama.cpp, through llama-cpp-python")
    gg.add_argument("job_dir", type=Path)
    gg.add_argument("gguf", type=Path, help="the GGUF of the model the job searched")
    gg.add_argument("-o", "--output", type=Path, required=True, help="the exported GGUF")
    gg.add_argument("--tolerance", type=float, default=TOLERANCE_PP,
                    help="largest difference of the two gains, in percentage points")
    gg.add_argument("--threads", type=int, default=None)
    gg.add_argument("--json", type=Path, default=None, help="write the report here")
    gg.set_defaults(run=check_gguf)
    args = ap.parse_args()
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
