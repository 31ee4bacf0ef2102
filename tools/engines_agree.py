"""The seeds' perplexity inside llama.cpp beside ``longrope-search eval``'s, on the same tokens.

Reads an ``eval.json`` (its model must be a GGUF file), re-picks its documents with the same
tokenizer, seed and k, and asks llama.cpp for the unscaled model at every length and for its
own PI and YaRN (``--rope-scaling linear|yarn --rope-scale s --yarn-orig-ctx L``) beyond L. The
two engines share the documents and the scaling formulas, so any gap is arithmetic and, for a
quantized GGUF, llama.cpp's quantized matmuls against transformers' dequantized weights.

    python tools/engines_agree.py results/smollm2-135m/eval/eval.json \\
        --out runs/smollm2-135m/engines_agree.md
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
from common import command_line, parser, write_report

from longrope_search.evaluation.documents import load_documents
from longrope_search.llamacpp.perplexity import llamacpp_ppl
from longrope_search.model.source import ModelSource

ENGINE_METHODS = ("none", "pi", "yarn")  # what llama.cpp scales by itself


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("eval_json", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="a .md table (and .json beside it)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--methods", default=",".join(ENGINE_METHODS),
                    help="of none, pi, yarn (none is also measured at L)")
    ap.add_argument("--lengths", default=None, help="a subset of the eval's (default all)")
    args = ap.parse_args()
    ev = json.loads(args.eval_json.read_text())
    source = ModelSource.of(ev["model"])
    L, lengths = ev["original_length"], ev["lengths"]
    if args.lengths:
        lengths = [n for n in lengths if str(n) in args.lengths.split(",")]
    docs = load_documents(ev["documents"], source.tokenizer(), min_tokens=max(ev["lengths"]),
                          k=ev["k"], seed=ev["seed"], max_tokens=max(lengths))
    ours = {(r["method"], r["length"]): r["ppl"] for r in ev["rows"]}
    rows = []
    for length in lengths:
        ids = [d[:length].tolist() for d in docs]
        s = max(1.0, length / L)
        for method in args.methods.split(",") if s > 1 else ("none",):
            t0 = time.time()
            ppl, _ = llamacpp_ppl(source.path, ids, rope=method, extension_ratio=s,
                                  original_length=L, threads=args.threads)
            rows.append({"method": method, "length": length, "llama.cpp": ppl,
                         "transformers": ours[method, length],
                         "gap_pct": 100 * (ppl / ours[method, length] - 1),
                         "seconds": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
    lines = ["| method | length | llama.cpp | transformers (eval) | gap |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['length']} | {r['llama.cpp']:.3f} | {r['transformers']:.3f} "
              f"| {r['gap_pct']:+.2f}% |" for r in rows]
    write_report(args.out, "\n".join(lines) + "\n", {"eval": str(args.eval_json), "rows": rows},
                 command_line())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
