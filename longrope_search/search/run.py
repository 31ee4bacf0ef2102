"""The entry point for any job: check everything cheap, then run it (one search, or a chain's
stages in order) on the evaluators given, one process per job, and say what it found.

The CLI's ``run`` and ``recover``, the service's runners and the benchmarks all start jobs here;
:func:`check_job` is what they call first to refuse a bad job before any weights load. A job's
data path from here enters each search module once: the plan (:mod:`.plan`), the evaluator
(:mod:`.evaluator`, which builds the scorer of :mod:`.fitness`), the loop (:mod:`.driver`, with
the strategy, the ledger and the tables), and what a finished job writes (:mod:`.outcome`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longrope_search.errors import ConfigError
from longrope_search.io import writable_folder
from longrope_search.model import LoadedModel
from longrope_search.rope import Candidate
from longrope_search.search.chain import check_chain, stage_spec
from longrope_search.search.driver import Driver, EndReason, OnProgress, Progress
from longrope_search.search.evaluator import Evaluator, Evaluators, local_evaluators
from longrope_search.search.job import JobSpec
from longrope_search.search.jobdir import JobDir, check_claim, claim, running
from longrope_search.search.outcome import N_HAT_ONLY_PYTHON, finish, finish_chain
from longrope_search.search.plan import Checked, Plan, check
from longrope_search.search.strategies import Strategy
from longrope_search.search.tables import migrate as migrate_tables
from longrope_search.search.trial import Evaluation

OnPlan = Callable[[Plan], None]


@dataclass
class SearchResult:
    """What a finished search found and what it cost (the files hold the rest)."""

    best: Candidate
    best_evaluation: Evaluation
    job_dir: Path
    evaluations: int  # scored by this run
    pruned: int
    reused: int  # taken from the ledger (or repeats) instead of scored
    document_evaluations: int
    cost_tokens: int  # forward tokens the whole job spent, earlier runs included
    seconds: float
    comparison: list[dict[str, Any]]
    comparison_documents: Path
    ended: EndReason | None = None
    candidates: int = 0  # scored against the candidate budget (gradient steps included)
    budget: int = 0
    budget_tokens: int | None = None
    semantics: str = ""  # what the comparison's rows mean

    @property
    def tables(self) -> Path:
        """The job's factor tables (one Parquet dataset)."""
        return JobDir(self.job_dir).generations

    @property
    def best_file(self) -> Path:
        """The job's ``best.json``."""
        return JobDir(self.job_dir).best


def check_job(spec: JobSpec) -> list[Checked]:
    """Everything cheap about a job, chained or not, before anything is written or loaded:
    each stage checked (one for a plain job), for :func:`run_job` to use instead of reading
    it all again."""
    writable_folder(spec.results_dir, "results_dir")
    check_claim(JobDir(spec.job_dir), spec)  # a name clash, before any weights load
    if spec.stages:
        return check_chain(spec)
    return [check(spec)]


def run_job(spec: JobSpec, *, evaluators: Evaluators | None = None,
            loaded: LoadedModel | None = None, progress: bool = True,
            on_progress: OnProgress | None = None,
            checked: list[Checked] | None = None, on_plan: OnPlan | None = None) -> SearchResult:
    """Run (or resume) a job, chained or not, scoring with ``evaluators`` (default: in this
    process, on ``loaded`` or the spec's model loaded once). Everything cheap is checked before
    an evaluator is opened (``checked``: what :func:`check_job` returned just before, used once);
    ``on_plan`` sees the first plan then, before any weights load (the CLI prints it)."""
    checked = checked or check_job(spec)
    if on_plan is not None:
        on_plan(checked[0].plan)  # every stage has the job's model
    with running(JobDir(spec.job_dir)):  # one process per job, before any weights load
        evaluators = evaluators or local_evaluators(loaded)
        if spec.stages:
            return _run_chain(spec, evaluators, progress, on_progress, checked)
        with evaluators(checked[0].plan) as evaluator:
            return run_search(spec, evaluator=evaluator, progress=progress,
                              on_progress=on_progress, checked=checked[0])


def run_search(spec: JobSpec, *, evaluator: Evaluator | None = None,
               loaded: LoadedModel | None = None, progress: bool = True,
               on_progress: OnProgress | None = None,
               checked: Checked | None = None) -> SearchResult:
    """Run (or resume) one search (a job, or one stage of a chain) to its end.

    Everything cheap is checked before any weights load or the job folder is written
    (``checked``: what :func:`~longrope_search.search.plan.check` gave a caller that has just
    checked it, so it is not read twice). ``evaluator`` (an open one, e.g. a Ray pool) defaults
    to scoring in this process on ``loaded`` (loaded here when not given). ``on_progress``
    gets the running counts after every evaluation; an exception it raises stops the search
    between two evaluations, with everything finished so far in the ledger.
    """
    if spec.stages:
        raise ConfigError("stages", "a chained job runs stage by stage",
                          "run it with longrope_search.search.run.run_job (the CLI and the "
                          "service do)")
    t0 = time.time()
    plan, strategy = checked or check(spec)
    folder = _open(JobDir.of(spec), spec)
    if evaluator is not None:
        return _search(plan, strategy, evaluator, folder, progress, on_progress, t0)
    with local_evaluators(loaded)(plan) as local:
        return _search(plan, strategy, local, folder, progress, on_progress, t0)


def _open(folder: JobDir, spec: JobSpec) -> JobDir:
    """Claim a job's folder for this run, as the current version writes it."""
    claim(folder, spec)
    if folder.legacy_tables():  # a job resumed from before schema version 4
        migrate_tables(folder)
    folder.remove_temporary()  # what a killed run was writing: rewritten from the ledger
    return folder


def _search(plan: Plan, strategy: Strategy, evaluator: Evaluator, folder: JobDir,
            progress: bool, on_progress: OnProgress | None, t0: float) -> SearchResult:
    driver = Driver(plan, strategy, evaluator, folder, on_progress, progress)
    driver.run()
    out = finish(plan, evaluator, folder, driver.history, driver.evals, driver.ended())
    s = driver.stats
    return SearchResult(out.best, out.evaluation, folder.path, s["evaluations"], s["pruned"],
                        s["reused"], s["documents"], driver.cost, time.time() - t0,
                        out.comparison, plan.spec.comparison_path, driver.ended(),
                        driver.new_asks, driver.budget, driver.budget_tokens, out.semantics)


def _run_chain(chain: JobSpec, evaluators: Evaluators, progress: bool,
               on_progress: OnProgress | None, checked: list[Checked]) -> SearchResult:
    """Run (or resume) every stage in order; returns the last long stage's search result."""
    folder = _open(JobDir(chain.job_dir), chain)
    results = []
    for i, stage in enumerate(chain.stages):
        spec = stage_spec(chain, i)
        # a stage checked up front as it is now is not read again (its seed may have changed)
        stage_checked = next((c for c in checked if c.plan.spec == spec), None) or check(spec)
        with evaluators(stage_checked.plan) as evaluator:
            results.append((stage, run_search(spec, evaluator=evaluator, progress=progress,
                                              on_progress=_tagged(on_progress, i, spec.name),
                                              checked=stage_checked)))
    last = next(r for st, r in reversed(results) if st.factors == "long")
    finish_chain(folder, JobDir(last.job_dir), [JobDir(r.job_dir) for _, r in results])
    return last


def _tagged(on_progress: OnProgress | None, index: int, name: str) -> OnProgress | None:
    if on_progress is None:
        return None

    def tagged(p: Progress) -> None:
        on_progress({**p, "stage": index, "stage_name": name})

    return tagged


def summarize(result: SearchResult) -> str:
    """What a finished search found and spent, in a few lines (the CLI prints it)."""
    lam = result.best.lambdas
    ev = result.best_evaluation
    return (f"best: ppl {ev.ppl:.4f} (mean NLL {ev.mean_nll:.5f}) n̂={result.best.n_hat} "
            f"m={result.best.attention_factor:.4f} λ[0..{lam.size - 1}] "
            f"{np.array2string(lam, precision=2, threshold=8)}\n"
            f"{N_HAT_ONLY_PYTHON + chr(10) if result.best.n_hat else ''}"
            f"{result.evaluations} evaluations ({result.pruned} pruned, {result.reused} reused "
            f"from the ledger), {result.document_evaluations} document forwards, "
            f"{result.cost_tokens / 1e6:.2f}M forward tokens in all, {result.seconds:.0f} s\n"
            f"ended: {end_line(result)}")


def end_line(result: SearchResult) -> str:
    """Why the search ended, with both budgets as spent: "token budget spent (5.51M of 5.51M
    forward tokens; 412 of 1344 candidates)"."""
    tokens = f"{result.cost_tokens / 1e6:.2f}M" + (
        f" of {result.budget_tokens / 1e6:.2f}M" if result.budget_tokens else "")
    return (f"{result.ended} ({tokens} forward tokens; {result.candidates} of {result.budget} "
            "candidates)")
