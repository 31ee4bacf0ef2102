"""Check a finished job's exports in the engines that load them.

``hf``: plain transformers, as an inference user would load them. Perplexity on the job's search
documents (plain ``model(ids, labels=ids)``, full logits) of the model folder whose config.json
is the job's ``hf --config`` export (what engines get: no n̂), and of the original model with
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
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import longrope_search
from longrope_search.evaluation.documents import load_documents
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir


def check_hf(args: argparse.Namespace) -> int:
    job = JobDir(args.job_dir)
    best = job.finished_best()
    spec = load_job(job.spec)
    target = best["target_length"]
    docs = load_documents(spec.documents_path, AutoTokenizer.from_pretrained(spec.model_path),
                          min_tokens=target, k=spec.k_documents, seed=spec.documents_seed,
                          max_tokens=target)

    def ppl(model: torch.nn.Module) -> float:
        with torch.no_grad():
            nll = [model(input_ids=d[None], labels=d[None]).loss.item() for d in docs]
        return math.exp(sum(nll) / len(nll))

    def load(folder: Path) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    original = load(spec.model_path)
    print(f"n_hat {best['n_hat']}; search ppl {best['search_ppl']:.5f}; without n_hat "
          f"{best.get('search_ppl_without_n_hat')}")
    print(f"from_pretrained on the exported config: {ppl(load(args.exported_model)):.5f}")
    print(f"original model, no scaling: {ppl(original):.5f}")
    longrope_search.apply_factors(original, args.factors)
    print(f"apply_factors on the longrope export: {ppl(original):.5f}")
    return 0


def check_gguf(args: argparse.Namespace) -> int:
    from longrope_search.io import write_json
    from longrope_search.llamacpp.check import check_gguf_export

    report = check_gguf_export(args.job_dir, args.gguf, args.output,
                               tolerance=args.tolerance, threads=args.threads)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{'':<10}{'llama.cpp':>12}{'search':>12}")
    for name, key in (("unscaled", "none"), ("YaRN", "yarn"), ("factors", "factors")):
        print(f"{name:<10}{report['llama.cpp'][key]:>12.4f}{report['transformers'][key]:>12.4f}")
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
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
