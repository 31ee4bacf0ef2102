"""Chained jobs: stages that run in order, each warm-started from the one before.

A spec with ``stages`` (for example 2× → 4× → 8×, then ``short``) runs each stage as a job of
its own under the chain's folder (layout: :mod:`~longrope_search.search.jobdir`), with the
chain's settings and the stage's length, strategy and budget. A long stage after the first is
seeded with the previous stage's best mapped to its ratio,

    λ' = 1 + (λ − 1)(s' − 1)/(s − 1)        (LongRoPE's code, --auto-rescale-init-factors)

beside the usual seeds; a ``short`` stage is the short-context recovery of the last long stage
(:mod:`~longrope_search.search.recovery`). On a frozen model a stage cannot do better than a
search of the last ratio from the same start: stages are a curriculum of targets with warm
starts, and ``bench/bench_chain.py`` measures whether that pays at equal cost.

Each stage resumes from its own ledger, so a chain killed in any stage continues where it
stopped; a finished stage is not searched again. :mod:`~longrope_search.search.run` runs the
stages in order; the chain's ``best.json`` and ``comparison.json`` are the last long stage's
(the exports read them), plus where the short factors are (``recovery``), written by
:func:`~longrope_search.search.outcome.finish_chain`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from longrope_search.errors import ConfigError
from longrope_search.io import write_json
from longrope_search.rope import rescale_ratio
from longrope_search.search.job import JobSpec, StageSpec, job_from_dict, stage_options
from longrope_search.search.jobdir import JobDir, stage_name
from longrope_search.search.plan import Checked, check
from longrope_search.search.recovery import recovery_spec


def stage_spec(chain: JobSpec, index: int) -> JobSpec:
    """Stage ``index`` of a chain as a job of its own (writes its seed file, mapped from the
    previous stage's best, when that stage has finished)."""
    stage = chain.stages[index]
    folder = JobDir(chain.job_dir)
    name = stage_name(index, stage.label)
    previous = _previous(chain, index)
    of = {"chain": chain.name, "index": index,
          "seeded_from": previous.name if previous else None}
    changes: dict[str, Any] = {"name": name, "results_dir": str(folder.stages), "stage": of}
    if stage.strategy is not None:
        changes["strategy"] = stage.strategy
    changes["strategy_options"] = stage_options(chain, stage)
    if stage.budget is not None:
        changes["budget"] = stage.budget.model_dump(mode="json")
    if stage.factors == "short":
        assert previous is not None  # the spec's validation: a short stage follows a long one
        return recovery_spec(previous.path, **changes)
    data = {k: v for k, v in chain.to_dict().items() if k not in ("stages", "stage")}
    data.update(changes, extension_ratio=stage.extension_ratio,
                target_length=stage.target_length)
    if previous is not None and previous.read_best() is not None:
        data["seed_files"] = [*data["seed_files"], str(_mapped_seed(chain, index, previous))]
    return job_from_dict(data)


def _previous(chain: JobSpec, index: int) -> JobDir | None:
    if index == 0:
        return None
    before = chain.stages[index - 1]
    return JobDir(JobDir(chain.job_dir).stages / stage_name(index - 1, before.label))


def _mapped_seed(chain: JobSpec, index: int, previous: JobDir) -> Path:
    """The previous stage's best λ mapped to this stage's ratio, as a factor file."""
    best = previous.finished_best()
    ratio = chain.stages[index].extension_ratio or (
        chain.stages[index].target_length / best["original_length"])
    path = JobDir(chain.job_dir).stage_seed(f"stage-{previous.name}")
    lambdas = rescale_ratio(best["lambdas"], best["extension_ratio"], ratio)
    write_json(path, {"lambdas": lambdas.tolist(), "n_hat": best["n_hat"],
                      "attention_factor": best["attention_factor"], "mapped_from": {
                          "stage": previous.name, "extension_ratio": best["extension_ratio"]}})
    return path


def check_chain(chain: JobSpec) -> list[Checked]:
    """Every stage's spec, model config, strategy and documents, before any weights load (a
    short stage is checked once the stage it recovers has finished)."""
    out = []
    for i, stage in enumerate(chain.stages):
        if stage.factors == "long" or _previous(chain, i).read_best() is not None:
            with _in_stage(i):
                spec = stage_spec(chain, i)
                out.append(check(spec))
    return out


@contextmanager
def _in_stage(index: int) -> Iterator[None]:
    """A stage's own field that fails (its length, strategy, …) is named as ``stages[i].x``."""
    try:
        yield
    except ConfigError as e:
        if e.field.split(".")[0].split("[")[0] not in StageSpec.model_fields:
            raise
        raise ConfigError(f"stages[{index}].{e.field}", e.problem, e.fix) from None
