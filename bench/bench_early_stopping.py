"""Early stopping: document evaluations saved, and whether the best candidate changes.

Runs a job as configured (early stopping on) and the same job with early stopping off, same
seed, side by side; a job already in its results folder is read back from its ledger rather
than scored again.

    python bench/bench_early_stopping.py configs/embedded-8x.yaml   # → runs/bench_early_stopping/
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from common import add_out, command_line, job_model, parser, write_report

from longrope_search.search.job import job_from_dict, load_job
from longrope_search.search.jobdir import JobDir
from longrope_search.search.run import run_search


def document_evaluations(job_dir: Path) -> tuple[int, int, int]:
    """(document forwards, candidates, pruned candidates) from a job's factor tables."""
    t = pd.read_parquet(JobDir(job_dir).generations)
    t = t[t.operator != "parent"]
    return int(t.documents_scored.sum()), len(t), int((t.status == "pruned").sum())


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("config", type=Path)
    add_out(ap, "runs/bench_early_stopping", folder=True)
    args = ap.parse_args()
    command = command_line()
    config = {**load_job(args.config).to_dict(), "strategy": "evolution"}  # Algorithm 1, as
    config.pop("budget", None)  # measured: its 1,344 evaluations, whatever the config runs
    on_spec = job_from_dict(config)
    off_spec = job_from_dict({**on_spec.to_dict(), "name": f"{on_spec.name}-no-early-stopping",
                              "early_stopping": {"enabled": False}})
    loaded = job_model(on_spec)
    on = run_search(on_spec, loaded=loaded)
    off = run_search(off_spec, loaded=loaded)
    docs_on, n_on, pruned = document_evaluations(on.job_dir)
    docs_off, n_off, _ = document_evaluations(off.job_dir)
    same = (np.array_equal(on.best.lambdas, off.best.lambdas)
            and on.best.n_hat == off.best.n_hat)
    saved = 1 - docs_on / docs_off
    es = on_spec.early_stopping
    rule = (f"rule `sequential`, z = {es.z}" if es.rule == "sequential"
            else f"rule `bound`, margin {es.margin} nats")
    text = f"""# Early stopping

Command: `{command}`

Job `{on_spec.name}` ({n_on} candidates, {on_spec.k_documents} documents each, early stopping
{rule}) against the same job and seed without early stopping.

| | early stopping | without |
|---|---|---|
| candidates | {n_on} | {n_off} |
| pruned | {pruned} | 0 |
| document evaluations | {docs_on} | {docs_off} |
| best ppl (search documents) | {on.best_evaluation.ppl:.4f} | {off.best_evaluation.ppl:.4f} |

Document evaluations saved: **{100 * saved:.1f}%**. Best candidate unchanged: **{same}**.
"""
    print(text)
    write_report(args.out / "early_stopping", text, {
        "job": on_spec.name, "rule": es.rule,
        "margin": es.margin, "z": es.z, "documents_on": docs_on,
        "documents_off": docs_off, "saved_fraction": saved, "pruned": pruned,
        "best_unchanged": same, "best_ppl_on": on.best_evaluation.ppl,
        "best_ppl_off": off.best_evaluation.ppl}, command)


if __name__ == "__main__":
    main()
