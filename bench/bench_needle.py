"""Needle fitness against perplexity fitness: the two searches' best factors on held-out text.

For each job's best (and YaRN): the held-out perplexity at L' (all tokens), and on the same
held-out documents with needles, the answer loss and the retrieval accuracy by depth.

    python bench/bench_needle.py results/embedded-8x results/embedded-8x-needle \
        --out results/needle_embedded_8x
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.needles import answer_labels, depths, needle_documents
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.factor_file import load_factor_file
from longrope_search.io import atomic_write, write_json
from longrope_search.model import load_model
from longrope_search.rope import seed_candidate
from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", type=Path, nargs="+", help="finished jobs of the same model and L'")
    ap.add_argument("--needles", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/needle_embedded_8x"))
    args = ap.parse_args()
    specs = [load_job(JobDir(j).spec) for j in args.jobs]
    bests = [JobDir(j).finished_best() for j in args.jobs]
    spec, target = specs[0], bests[0]["target_length"]
    loaded = load_model(spec.model_path, dtype="float32")
    cands = [replace(load_factor_file(JobDir(j).best, loaded.geometry), name=j.name)
             for j in args.jobs]
    cands.append(seed_candidate("yarn", loaded.geometry, bests[0]["extension_ratio"]))
    docs = load_documents(spec.heldout_path, loaded.tokenizer, min_tokens=target, k=12,
                          max_tokens=target, seed=spec.documents_seed)
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
             f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`", "",
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
    atomic_write(args.out.with_suffix(".md"), lambda p: p.write_text("\n".join(lines) + "\n"))
    write_json(args.out.with_suffix(".json"), {"rows": rows, "depths": list(d),
                                               "command": sys.argv})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
