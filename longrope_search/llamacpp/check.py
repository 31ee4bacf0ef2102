"""Check a job's GGUF export inside llama.cpp: does the engine see the gain the search reported?

On the job's own search documents at L' (truncated, as the search scored them):

- in llama.cpp: the input GGUF unscaled, the input GGUF under llama.cpp's own YaRN
  (``--rope-scaling yarn --rope-scale s --yarn-orig-ctx L``), and the exported GGUF as written;
- in transformers (the search's scorer): YaRN, and the best factors at n̂ = 0 (what llama.cpp
  applies: it rescales every position).

The gain over YaRN, ppl(YaRN)/ppl(factors) − 1, must agree between the two within ``tolerance``
percentage points. Measured on the embedded model at 8× (results/llamacpp/README.md): 0.00 pp with
a float32 GGUF, 0.01 pp with Q8_0; the default 1 pp leaves room for coarser quantizations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.sweep import perplexity_by_length
from longrope_search.gguf_export import export_gguf
from longrope_search.llamacpp.perplexity import llamacpp_ppl
from longrope_search.model import load_model
from longrope_search.rope import Candidate
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir

TOLERANCE_PP = 1.0


def check_gguf_export(job_dir: str | Path, gguf_in: str | Path, gguf_out: str | Path, *,
                      tolerance: float = TOLERANCE_PP, threads: int | None = None
                      ) -> dict[str, Any]:
    """Export ``job_dir`` to ``gguf_out`` and measure both engines; a JSON-ready report whose
    ``agrees`` says whether the gains match within ``tolerance`` points."""
    job = JobDir(Path(job_dir))
    best, spec = job.finished_best(), load_job(job.spec)
    notes = export_gguf(job.path, gguf_in, gguf_out)
    loaded = load_model(spec.model_path, dtype="float32", device="cpu",
                        trust_remote_code=spec.trust_remote_code)
    target, s, L = int(best["target_length"]), float(best["extension_ratio"]), \
        int(best["original_length"])
    docs = load_documents(spec.documents_path, loaded.tokenizer, min_tokens=target,
                          k=spec.k_documents, seed=spec.documents_seed, max_tokens=target,
                          text_field=spec.text_field)
    factors = Candidate.create(np.asarray(best["lambdas"]), num_pairs=len(best["lambdas"]),
                               attention_factor=float(best["attention_factor"]), name="factors")
    rows = perplexity_by_length(loaded.model, loaded.geometry, docs, [target],
                                methods=["none", "yarn"], candidates=[factors], progress=False)
    search = {r["method"]: r["ppl"] for r in rows}
    ids = [d.tolist() for d in docs]
    engine = {"none": llamacpp_ppl(gguf_in, ids, rope="none", threads=threads)[0],
              "yarn": llamacpp_ppl(gguf_in, ids, rope="yarn", extension_ratio=s,
                                   original_length=L, threads=threads)[0],
              "factors": llamacpp_ppl(gguf_out, ids, threads=threads)[0]}
    gain = {"llama.cpp": 100 * (engine["yarn"] / engine["factors"] - 1),
            "search": 100 * (search["yarn"] / search["factors"] - 1)}
    difference = abs(gain["llama.cpp"] - gain["search"])
    by_length = _by_length(job, spec, loaded, factors, gguf_out, target, threads)
    worst = max(r["difference_pct"] for r in by_length.values())
    return {
        "job": job.path.name, "gguf_in": str(gguf_in), "gguf_out": str(gguf_out),
        "documents": len(docs), "target_length": target, "extension_ratio": s,
        "search_ppl_without_n_hat": best.get("search_ppl_without_n_hat", best["search_ppl"]),
        "llama.cpp": engine, "transformers": search, "gain_over_yarn_pct": gain,
        "difference_pp": difference, "tolerance_pp": tolerance, "by_length": by_length,
        "agrees": difference <= tolerance and worst <= tolerance, "notes": notes,
    }


def _by_length(job: JobDir, spec: Any, loaded: Any, factors: Any, gguf_out: str | Path,
               target: int, threads: int | None) -> dict[str, dict[str, float]]:
    """The exported factors at each length of the job's comparison, on its documents, in a
    context allocated for L' as a deployment does: llama.cpp against the search's scorer (and
    the comparison's own figure), the difference in percent."""
    comparison = job.read_comparison() or {}
    lengths = comparison.get("lengths") or [target]
    best = {r["method"]: r for r in comparison.get("rows", [])}.get("best", {})
    docs = load_documents(spec.comparison_path, loaded.tokenizer, min_tokens=max(lengths),
                          k=spec.k_documents, seed=spec.documents_seed,
                          max_tokens=max(lengths), text_field=spec.text_field)
    rows = perplexity_by_length(loaded.model, loaded.geometry, docs, lengths, methods=[],
                                candidates=[factors], progress=False)
    out = {}
    for row in rows:
        n = row["length"]
        engine = llamacpp_ppl(gguf_out, [d[:n].tolist() for d in docs], threads=threads,
                              context=target)[0]
        out[str(n)] = {"llama.cpp": engine, "transformers": row["ppl"],
                       "comparison": best.get("ppl_by_length", {}).get(str(n)),
                       "difference_pct": 100 * abs(engine / row["ppl"] - 1)}
    return out


__all__ = ["TOLERANCE_PP", "check_gguf_export"]
