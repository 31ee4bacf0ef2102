"""Short-context recovery (LongRoPE §3.3): search the short factors of a finished long job.

Engines apply the long job's attention factor m to short inputs too (transformers: its one
``attention_factor``; llama.cpp: its one ``attn_factor``), and some apply the long factors to
short prompts as well. The recovery job searches λ for contexts up to L on the same model and
documents, under that m: ``factors: short``, scored in windows of L over the first L' tokens of
each search document (the text the long job read, at the long job's cost per candidate). Its
seeds are λ = 1 (what an engine without short factors uses) and the long factors. The exports
then carry its best as ``short_factor`` (``export --short-from``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longrope_search.errors import ConfigError
from longrope_search.evaluation.modes import SLIDING
from longrope_search.search.job import JobSpec, job_from_dict, load_job
from longrope_search.search.jobdir import JobDir

BEST_KEYS = ("original_length", "target_length", "extension_ratio", "attention_factor")


def recovery_spec(long_job: str | Path, **changes: Any) -> JobSpec:
    """The short-factor job of a finished long job (its folder), next to it, named
    ``<job>-short``; ``changes`` override spec fields (``strategy``, ``budget``, …)."""
    job = JobDir(Path(long_job))
    best = job.finished_best()
    spec = load_job(job.spec)
    if spec.factors != "long":
        raise ConfigError("job", f"{job.name} already searched short factors",
                          "give the long job it recovers")
    if spec.stages:
        raise ConfigError("job", f"{job.name} is a chained job; its stages are jobs in "
                          f"{job.stages}", "recover its last long stage (longrope-search "
                          f"recover {job.stages}/NN-…), or end the chain with a short stage: "
                          "stages: [..., {factors: short}]")
    missing = [k for k in BEST_KEYS if k not in best]
    if missing:
        raise ConfigError("job", f"{job.best} lacks {', '.join(missing)}",
                          "it is not a best.json that longrope-search wrote: rerun the job")
    data = spec.to_dict()
    L = best["original_length"]
    data.update(
        name=job.recovery().name, factors="short", target_length=None, extension_ratio=None,
        attention_factor=best["attention_factor"], seeds=["none"],
        seed_files=[str(job.best.resolve())], results_dir=str(job.path.parent),
        space={**data["space"], "n_hat": [0], "lambda_max": best["extension_ratio"],
               "longrope2": False, "critical_dim": None},
        scoring={**data["scoring"], "mode": SLIDING, "stride": L,
                 "document_tokens": best["target_length"]},
    )
    return job_from_dict({**data, **changes})
