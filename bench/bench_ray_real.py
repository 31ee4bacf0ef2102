"""The real scorer on Ray: a small search of the embedded model with 1, then 2 ScorerWorker actors.

Same job both times (``configs/embedded-8x.yaml`` with a reduced budget, bfloat16 on CPU), same
coordinator and measurements as ``bench_ray_scaling.py``; the workers are the real
``workers/scorer.py`` actors (one CPU each, no GPU), each scoring with one torch thread. The two
runs must find the same best candidate: the generation's pruning thresholds are fixed before it
starts, so the order in which workers finish does not change any result.

    python bench/bench_ray_real.py     # → runs/bench_ray_real/bench_ray_real.md, .json
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from bench_ray_scaling import TimedPool, measure_search, warm_up
from common import add_out, command_line, parser, write_report

from longrope_search.search.job import JobSpec, job_from_dict

ROOT = Path(__file__).resolve().parents[1]
BUDGET = {"population": 16, "mutations": 8, "crossovers": 8, "top_k": 8, "generations": 2}


def job(config: Path, workers: int) -> JobSpec:
    data = yaml.safe_load(config.read_text())
    data.pop("budget", None)  # Algorithm 1 with the small budget below, whatever the config runs
    data.update(name=f"{data['name']}-ray-{workers}w", strategy="evolution",
                results_dir=tempfile.mkdtemp(prefix="real-"),
                search={**data.get("search", {}), **BUDGET},
                scoring={**data.get("scoring", {}), "dtype": "bfloat16", "device": "cpu"})
    return job_from_dict(data)


def run(config: Path, workers: int) -> dict[str, Any]:
    spec = job(config, workers)
    t0 = time.perf_counter()
    pool = TimedPool(spec, workers, gpus_per_worker=0, cpus_per_worker=1)
    pool.ready()
    load = time.perf_counter() - t0
    result, row = measure_search(spec, pool)
    pool.shutdown()
    row.update(worker_load_seconds=load, best_lambdas=result.best.lambdas.tolist(),
               best_nll=list(result.best_evaluation.nll), best_ppl=result.best_evaluation.ppl)
    print({k: v for k, v in row.items() if k not in ("best_lambdas", "best_nll")}, flush=True)
    return row


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/embedded-8x.yaml"))
    add_out(ap, "runs/bench_ray_real", folder=True)
    args = ap.parse_args()
    command = command_line()
    imports = warm_up(job(args.config, 1))
    # OMP_NUM_THREADS=1: one torch thread per worker, so two workers do not fight over 2 cores
    ray.init(num_cpus=os.cpu_count(), num_gpus=0, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    rows = [run(args.config, w) for w in (1, 2)]
    ray.shutdown()
    same = all(r["best_lambdas"] == rows[0]["best_lambdas"] and r["best_nll"] == rows[0]["best_nll"]
               and r["best_n_hat"] == rows[0]["best_n_hat"] for r in rows)
    lines = [
        "# Search on Ray with the real scorer (embedded model, CPU)", "",
        f"Command: `{command}`", "",
        f"Job: `{args.config}`"
        f" with P {BUDGET['population']}, N1 {BUDGET['mutations']}, N2 {BUDGET['crossovers']}, "
        f"k {BUDGET['top_k']}, {BUDGET['generations']} generations, bfloat16 on CPU. Real "
        "`workers/scorer.py` actors, 1 CPU and 1 torch thread each, no GPU; the coordinator, "
        f"Ray and the workers share {os.cpu_count()} CPU cores. Utilisation: evaluation time "
        "measured by the workers / (workers × search wall time).", "",
        "| workers | candidates | search s | candidates / s | worker utilisation "
        "| coordinator wall ms / cand. | coordinator CPU ms / cand. | best ppl | best n̂ "
        "| worker start (model load) s | job start-up s | job end s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['candidates']} | {r['search_seconds']:.1f} "
            f"| {r['candidates_per_second']:.2f} | {100 * r['utilisation']:.1f}% "
            f"| {r['coordinator_ms_per_candidate']:.2f} "
            f"| {r['coordinator_cpu_ms_per_candidate']:.2f} | {r['best_ppl']:.4f} "
            f"| {r['best_n_hat']} | {r['worker_load_seconds']:.1f} | {r['startup_seconds']:.2f} "
            f"| {r['end_seconds']:.2f} |")
    speedup = rows[0]["search_seconds"] / rows[1]["search_seconds"]
    lines += [
        "", f"Same best candidate (λ, n̂ and per-document NLL) with 1 and 2 workers: "
        f"{'yes' if same else 'NO'}. Speed-up with 2 workers: {speedup:.2f}×, on 2 cores that "
        "also run the coordinator and Ray. One-time imports of the coordinator process, paid "
        f"before the clock: {imports:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.out / "bench_ray_real", text, {"cpu_cores": os.cpu_count(),
                                                     "same_best": same, "speedup": speedup,
                                                     "rows": rows}, command)
    if not same:
        sys.exit("the best candidate differs between 1 and 2 workers")


if __name__ == "__main__":
    main()
