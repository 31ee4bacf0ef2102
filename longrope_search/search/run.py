"""The entry point for any job: check everything cheap, then run it (one search, or a chain's
stages in order) on the evaluators given, one process per job.

The CLI's ``run`` and ``recover``, the service's runners and the benchmarks all start jobs here;
:func:`check_job` is what they call first to refuse a bad job before any weights load.
"""

from __future__ import annotations

from longrope_search.io import writable_folder
from longrope_search.model import LoadedModel
from longrope_search.search.chain import Checked, check_chain, run_chain
from longrope_search.search.driver import OnProgress, SearchResult, run_search
from longrope_search.search.evaluator import Evaluators, local_evaluators
from longrope_search.search.job import JobSpec
from longrope_search.search.jobdir import JobDir, check_claim, running
from longrope_search.search.plan import prepare


def check_job(spec: JobSpec) -> Checked:
    """Everything cheap about a job, chained or not, before anything is written or loaded;
    what was prepared, for :func:`run_job` to use instead of reading it all again."""
    writable_folder(spec.results_dir, "results_dir")
    check_claim(JobDir(spec.job_dir), spec)  # a name clash, before any weights load
    if spec.stages:
        return check_chain(spec)
    return [(spec, prepare(spec))]


def run_job(spec: JobSpec, *, evaluators: Evaluators | None = None,
            loaded: LoadedModel | None = None, progress: bool = True,
            on_progress: OnProgress | None = None,
            checked: Checked | None = None) -> SearchResult:
    """Run (or resume) a job, chained or not, scoring with ``evaluators`` (default: in this
    process, on ``loaded`` or the spec's model loaded once). Everything cheap is checked before
    an evaluator is opened (``checked``: what :func:`check_job` returned just before, used once)."""
    evaluators = evaluators or local_evaluators(loaded)
    checked = checked or check_job(spec)
    with running(JobDir(spec.job_dir)):  # one process per job, before any weights load
        if spec.stages:
            return run_chain(spec, evaluators=evaluators, progress=progress,
                             on_progress=on_progress, checked=checked)
        with evaluators(spec) as evaluator:
            return run_search(spec, evaluator=evaluator, progress=progress,
                              on_progress=on_progress, prepared=checked[0][1])
