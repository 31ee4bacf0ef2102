"""What the bench scripts (and the tools in tools/) share: their arguments, the command line
that made a report, writing a report, and reading a finished job, its model and documents.

Every script writes under ``runs/`` unless ``--out`` says otherwise; the committed copies under
``results/`` were made by naming ``--out results/...`` (results/README.md gives each command).
A report is ``OUT.md`` and ``OUT.json``, each written atomically, both carrying the command
line that made them.

A bench script imports this module as ``common``: Python puts the running script's folder,
bench/, first on ``sys.path``. A tool puts bench/ there itself. (``gpu_check.py`` does not use
it: its test loads that file alone.)
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_search.io import atomic_write, write_json

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from longrope_search.evaluation.perplexity import PerplexityScorer, Scorer
    from longrope_search.model import LoadedModel
    from longrope_search.search.job import JobSpec
    from longrope_search.search.jobdir import JobDir
    from longrope_search.search.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


# -- arguments ----------------------------------------------------------------------------------
def parser(doc: str | None, *, first_paragraph: bool = False) -> argparse.ArgumentParser:
    """A parser whose ``--help`` is the script's docstring (or only its first paragraph)."""
    if first_paragraph:
        return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_out(ap: argparse.ArgumentParser, default: str, *, folder: bool = False) -> None:
    """``--out``: the report's path without its suffix (OUT.md, OUT.json), or with
    ``folder`` the folder its files go in; ``default`` is under ``runs/``."""
    what = ("folder of the report's files" if folder
            else "the report's path without suffix: writes OUT.md and OUT.json")
    ap.add_argument("--out", type=Path, default=Path(default), help=f"{what} (default {default})")


def add_runs_dir(ap: argparse.ArgumentParser, default: str) -> None:
    """``--runs-dir``: where the script's jobs run (ordinary resumable job folders)."""
    ap.add_argument("--runs-dir", type=Path, default=Path(default),
                    help=f"job folders of the runs, resumable (default {default})")


def add_threads(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# -- reports ------------------------------------------------------------------------------------
def command_line(argv: list[str] | None = None) -> str:
    """The command that made a report, as it would be typed at the repository's root:
    ``python bench/NAME.py ARGS``."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else Path(argv[0])
    return shlex.join(["python", str(shown), *argv[1:]])


def write_report(out: Path, text: str, data: dict[str, Any], command: str) -> Path:
    """``OUT.json`` (the command, then ``data``) and ``OUT.md`` (``text`` as given), each
    written atomically; the markdown's path."""
    write_json(out.with_suffix(".json"), {"command": command, **data})
    return atomic_write(out.with_suffix(".md"), lambda p: p.write_text(text))


# -- finished jobs, their models and documents --------------------------------------------------
def finished_job(folder: Path) -> tuple[JobDir, JobSpec, dict[str, Any]]:
    """A finished job folder: its files, its spec (``job.yaml``) and its ``best.json``."""
    from longrope_search.search.job import load_job
    from longrope_search.search.jobdir import JobDir

    job = JobDir(folder)
    best = job.finished_best()
    return job, load_job(job.spec), best


@functools.cache
def _model(path: Path, dtype: str, device: str) -> LoadedModel:
    from longrope_search.model import load_model

    return load_model(path, dtype=dtype, device=device)


def job_model(spec: JobSpec, dtype: str | None = None) -> LoadedModel:
    """The job's model as its ``scoring`` loads it (``dtype`` overrides), once per process:
    scorers set each candidate's factors on it before scoring, so jobs can share it."""
    return _model(spec.model_path, dtype or spec.scoring.dtype, spec.scoring.device)


def heldout_scorer(plan: Plan, loaded: LoadedModel) -> Scorer:
    """The job's fitness on its held-out documents (its search documents if it names none)."""
    from longrope_search.search.fitness import scorer_for

    return scorer_for(plan, loaded, plan.heldout)


def heldout_documents(spec: JobSpec, tokenizer: Any, length: int, k: int = 12
                      ) -> list[torch.Tensor]:
    """``k`` of the job's held-out documents, each cut to its first ``length`` tokens."""
    from longrope_search.evaluation.documents import load_documents

    return load_documents(spec.heldout_path, tokenizer, min_tokens=length, k=k,
                          max_tokens=length, seed=spec.documents_seed)


def job_scorer(folder: Path) -> tuple[Plan, LoadedModel, PerplexityScorer]:
    """A job folder's plan, its model (see :func:`job_model`) and its search scorer."""
    from longrope_search.search.fitness import scorer_for
    from longrope_search.search.job import load_job
    from longrope_search.search.jobdir import JobDir
    from longrope_search.search.plan import plan_job

    spec = load_job(JobDir(folder).spec)
    plan = plan_job(spec)
    loaded = job_model(spec)
    return plan, loaded, scorer_for(plan, loaded)


def descents(tables: pd.DataFrame) -> list[pd.DataFrame]:
    """Each of a job's gradient descents (chains of ``gradient`` steps, each step's parent the
    step before it), its steps in order, from the job's tables."""
    steps = tables[tables.operator == "gradient"].set_index("candidate_id")
    after = {row.parents[0]: key for key, row in steps.iterrows()}
    out = []
    for key in [k for k, row in steps.iterrows() if row.parents[0] not in steps.index]:
        path = [key]
        while path[-1] in after:
            path.append(after[path[-1]])
        out.append(steps.loc[path])
    return out
