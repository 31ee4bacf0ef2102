"""Check a finished job's exports in plain transformers, as an inference user would load them.

Perplexity on the job's search documents (plain ``model(ids, labels=ids)``, full logits) of:
the model folder whose config.json is the job's ``hf --config`` export (what engines get: no n̂),
and the original model with ``longrope_search.apply_factors`` on the ``longrope`` export.

    longrope-search export JOB --format hf --config -o MODEL_COPY/config.json
    longrope-search export JOB --format longrope -o JOB.longrope.json
    python scripts/check_export.py runs/JOB MODEL_COPY JOB.longrope.json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job_dir", type=Path)
    ap.add_argument("exported_model", type=Path, help="model folder with the exported config")
    ap.add_argument("factors", type=Path, help="the job's longrope export")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
