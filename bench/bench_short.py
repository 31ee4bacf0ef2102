"""Short-context recovery checked in plain transformers, as an inference user loads the export.

Held-out perplexity by length (L/2, L, and the long job's L') through ``from_pretrained`` on:
the unmodified model; the long job's ``hf --config`` export with short_factor = ones (no
recovery); the same export carrying the recovery job's short factors. The recovery is meant to
bring L/2 and L back to the unmodified model while L' keeps the long search's perplexity.

    python bench/bench_short.py results/embedded-8x     # → runs/bench_short/short_recovery.md
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from common import add_out, command_line, finished_job, heldout_documents, parser, write_report
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrope_search.export import export_job

MODEL_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")


def ppl(model: torch.nn.Module, docs: list[torch.Tensor], length: int) -> float:
    """Mean NLL over every window of ``length`` tokens in the documents, plain labels=ids."""
    with torch.no_grad():
        nll = [model(input_ids=w[None], labels=w[None]).loss.item()
               for d in docs for w in d.split(length) if w.numel() == length]
    return math.exp(sum(nll) / len(nll))


def folder_with(config: dict, model_path: Path, root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    for f in MODEL_FILES:
        shutil.copy(model_path / f, folder / f)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("job", type=Path, help="the long job (its recovery job beside it)")
    add_out(ap, "runs/bench_short/short_recovery")
    args = ap.parse_args()
    torch.manual_seed(0)
    job, spec, best = finished_job(args.job)
    L, target = best["original_length"], best["target_length"]
    with_recovery = export_job(job.path, "hf", with_config=True)
    if "short_factor_from" not in with_recovery["longrope_search"]:
        sys.exit(f"no finished recovery job for {job.name}: longrope-search recover {job.path}")
    without = json.loads(json.dumps(with_recovery))
    without["rope_parameters"]["short_factor"] = [1.0] * len(best["lambdas"])
    tok = AutoTokenizer.from_pretrained(spec.model_path)
    docs = heldout_documents(spec, tok, target)
    lengths = [L // 2, L, target]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"unmodified": Path(spec.model_path),
                  "export, short_factor = ones": folder_with(without, spec.model_path,
                                                             Path(tmp), "ones"),
                  "export with the recovery": folder_with(with_recovery, spec.model_path,
                                                          Path(tmp), "recovered")}
        for name, folder in models.items():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            rows[name] = {n: ppl(model, docs, n) for n in lengths}
    base = rows["unmodified"]
    lines = [f"# Short-context recovery in plain transformers ({job.name})", "",
             f"Command: `{command_line()}`", "",
             f"Held-out perplexity, {len(docs)} documents cut into windows of each length, "
             "`from_pretrained` on the exported config.json (transformers applies its one "
             f"attention_factor, {best['attention_factor']:.4f}, at every length). Recovery job: "
             f"`{with_recovery['longrope_search']['short_factor_from']}`; long search's "
             f"held-out ppl at {target}: see `{job.name}/comparison.json`.", "",
             "| model | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for name, r in rows.items():
        cells = [f"{r[n]:.3f}" + ("" if name == "unmodified" or n == target
                                  else f" ({100 * (r[n] / base[n] - 1):+.2f}%)") for n in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_report(args.out, "\n".join(lines) + "\n", {"lengths": lengths, "ppl": rows},
                 command_line())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
