"""Needle fitness against perplexity fitness: the two searches' best factors on held-out text.

For each job's best (and YaRN): the held-out perplexity at L' (all tokens), and on the same
held-out documents with needles, the answer loss and the retrieval accuracy by depth.

    python bench/bench_needle.py results/embedded-8x results/bench_needle/embedded-8x-needle
                                       # → runs/bench_needle/needle_embedded_8x.md
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import (
    add_out,
    command_line,
    finished_job,
    heldout_documents,
    job_model,
    parser,
    write_report,
)

from longrope_search.evaluation.needles import answer_labels, depths, needle_documents
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.factor_file import load_factor_file
from longrope_search.rope import seed_candidate


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("jobs", type=Path, nargs="+", help="finished jobs of the same model and L'")
    ap.add_argument("--needles", type=int, default=4)
    add_out(ap, "runs/bench_needle/needle_embedded_8x")
    args = ap.parse_args()
    jobs = [finished_job(j) for j in args.jobs]
    (_, spec, best), target = jobs[0], jobs[0][2]["target_length"]
    loaded = job_model(spec, dtype="float32")
    cands = [replace(load_factor_file(job.best, loaded.geometry), name=job.name)
             for job, _, _ in jobs]
    cands.append(seed_candidate("yarn", loaded.geometry, best["extension_ratio"]))
    docs = heldout_documents(spec, loaded.tokenizer, target)
    plain = PerplexityScorer(loaded.model, loaded.geometry, docs, length=target)
    needled = needle_documents(docs, loaded.tokenizer, target, args.needles,
                               spec.documents_seed)
    needle = PerplexityScorer(loaded.model, loaded.geometry, [n.ids for n in needled],
                              length=target, groups=[answer_labels(n) for n in needled])
    rows = []
    for cand, r in zip(cands, plain.score(cands), strict=True):
        per_depth = np.mean([needle.score_groups([cand], i)[0][0]
                             for i in range(needle.num_documents)], axis=0)
        rows.append({"factors": cand.name, "heldout_ppl": r.ppl,
                     "answer_nll_by_depth": per_depth.tolist(),
                     "answer_ppl": math.exp(float(per_depth.mean())),
                     "accuracy_by_depth": needle.retrieved(cand).mean(axis=0).tolist()})
    d = depths(args.needles)
    lines = ["# Needle fitness against perplexity fitness (held-out documents)", "",
             f"Command: `{command_line()}`", "",
             f"{len(docs)} held-out documents at L' = {target}: perplexity of all tokens; the "
             f"same documents with {args.needles} needles (depths "
             f"{', '.join(f'{x:g}' for x in d)}; 0 = the start of the text, farthest from the "
             "questions): the answer tokens' NLL by depth and the share of needles retrieved "
             "(greedy decoding reproduces every digit).", "",
             "| factors | held-out ppl | " + " | ".join(f"answer NLL @ {x:g}" for x in d)
             + " | retrieved (all depths) |", "|---|---|" + "---|" * len(d) + "---|"]
    for r in rows:
        lines.append(f"| {r['factors']} | {r['heldout_ppl']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in r["answer_nll_by_depth"])
                     + f" | {np.mean(r['accuracy_by_depth']):.0%} |")
    write_report(args.out, "\n".join(lines) + "\n", {"rows": rows, "depths": list(d)},
                 command_line())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
