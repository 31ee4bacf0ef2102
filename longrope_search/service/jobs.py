"""Jobs of the service: a folder each under the results folder, a queue, and runners.

A job's folder holds its spec (``job.yaml``), its ledger, its Parquet tables and ``state.json``
(state, progress, error, times). Everything a restarted server needs is on disk: jobs that were
queued or running when it stopped are queued again and resume from their ledgers.

States (:class:`State`): ``queued`` → ``running`` (→ ``cancelling``) → ``finished`` |
``failed`` | ``cancelled``; ``resume`` puts a cancelled or failed job back in the queue. A
folder whose files cannot be read is ``broken``: listed with the reason, never run, so one
damaged folder leaves every other job served. Jobs
run one at a time by default (``max_running``), in the server's process or, with
``serve --ray``, each on its own pool of Ray scorer workers; the others queue.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from longrope_search.defaults import is_named_location
from longrope_search.errors import ConfigError
from longrope_search.io import LockHeld, take_lock, write_json
from longrope_search.search.job import PATH_FIELDS, JobSpec, job_from_dict, load_job
from longrope_search.search.jobdir import JobDir, check_claim, claim, lock_holder
from longrope_search.search.run import check_job
from longrope_search.service.reports import generation_summaries
from longrope_search.service.states import (
    ACTIVE,
    BROKEN,
    CANCELLABLE,
    CANCELLED,
    CANCELLING,
    FAILED,
    FINISHED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    State,
)

if TYPE_CHECKING:
    from longrope_search.search.driver import OnProgress, Progress


class JobCancelled(Exception):
    """Raised inside a running search to stop it between two evaluations."""


class JobConflict(Exception):
    """The request does not fit the job's current state (or the job already exists)."""


@dataclass
class Job:
    spec: JobSpec
    state: str = QUEUED
    # the search's last Progress (search.driver), or what state.json or the tables kept of it
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def name(self) -> str:
        """The job's name (its spec's)."""
        return self.spec.name

    @property
    def dir(self) -> Path:
        """The job's folder, as a path."""
        return self.spec.job_dir

    @property
    def files(self) -> JobDir:
        """The job's folder and its layout."""
        return JobDir(self.spec.job_dir)

    def summary(self) -> dict[str, Any]:
        """State and progress; cost in forward tokens (``budget_tokens`` None: no token budget)."""
        p = self.progress
        budget = p.get("budget") or self.spec.evaluation_budget
        budget_tokens = p.get("budget_tokens") or self.spec.budget.tokens
        # candidates counted against the budget, gradient steps included
        done = p.get("candidates", p.get("evaluations", 0) + p.get("reused", 0))
        # The search stops at whichever budget runs out first: evaluations or forward tokens.
        fraction = max(done / budget if budget else 0.0,
                       (p.get("cost_tokens") or 0) / budget_tokens if budget_tokens else 0.0)
        stages = [st.label for st in self.spec.stages]
        if stages:  # a chain: the stages before this one are done
            fraction = (p.get("stage", 0) + min(1.0, fraction)) / len(stages)
        eta = None
        if self.state == RUNNING and self.started and p.get("evaluations"):
            per = (time.time() - self.started) / p["evaluations"]
            eta = max(0.0, per * (budget - done))
        best = p.get("best_ppl")
        state = CANCELLING if self.state == RUNNING and self.cancel.is_set() else self.state
        return {"name": self.name, "state": state, "submitted": self.submitted,
                "started": self.started, "finished": self.finished, "error": self.error,
                "generation": p.get("generation"), "generations": self.spec.search.generations,
                "evaluations": p.get("evaluations", 0), "reused": p.get("reused", 0),
                "pruned": p.get("pruned", 0), "candidates": done, "budget": budget,
                "strategy": p.get("strategy") or self.spec.strategy,
                "cost_tokens": p.get("cost_tokens"), "budget_tokens": budget_tokens,
                "fraction_done": min(1.0, fraction) if budget or budget_tokens else None,
                "best_ppl": best if best is not None and best != float("inf") else None,
                "eta_seconds": eta, "stages": stages, "stage": p.get("stage"),
                "stage_name": p.get("stage_name")}

    def detail(self) -> dict[str, Any]:
        """The summary, the spec and a line per generation (``GET /api/jobs/{name}``)."""
        return {**self.summary(), "spec": self.spec.to_dict(),
                "generation_summaries": generation_summaries(self.dir)}

    def save(self) -> None:
        """Write the job's state, progress and times to ``state.json`` (atomically)."""
        write_json(self.files.state, {
            "state": self.state, "progress": {k: v for k, v in self.progress.items()
                                              if v != float("inf")},
            "error": self.error, "submitted": self.submitted, "started": self.started,
            "finished": self.finished})


@dataclass(frozen=True)
class BrokenJob:
    """A job folder whose files cannot be read (a cut-off table, a ``state.json`` that is not
    JSON, an invalid ``job.yaml``): listed with the reason, never run or resumed."""

    name: str
    reason: str
    submitted: float = 0.0
    state: str = BROKEN

    @property
    def conflict(self) -> str:
        """Why no job of this name can be submitted or resumed."""
        return (f"job {self.name!r} is broken ({self.reason}): repair or remove its folder, "
                "or use another name")

    def summary(self) -> dict[str, Any]:
        """The job's line in ``GET /api/jobs``: broken, with why."""
        return {"name": self.name, "state": BROKEN, "submitted": self.submitted,
                "error": self.reason, "generations": 0, "evaluations": 0, "reused": 0,
                "pruned": 0, "candidates": 0, "budget": 0, "strategy": "", "stages": []}


#: Runs one job to its end; raises JobCancelled when ``job.cancel`` is set.
Runner = Callable[[Job], None]


def check_paths(data: dict[str, Any], data_roots: list[Path]) -> None:
    """Refuse a request whose model or documents lie outside the server's data roots."""
    for name in PATH_FIELDS:
        value = data.get(name)
        if value is None or is_named_location(str(value)):
            continue
        path = Path(str(value)).expanduser().resolve()
        if not any(path.is_relative_to(root) for root in data_roots):
            raise ConfigError(name, f"{value!r} is outside the folders this server may read",
                              "put it under a --data-root of the server, or use 'embedded'")
    for i, value in enumerate(data.get("seed_files") or []):
        path = Path(str(value)).expanduser().resolve()
        if not any(path.is_relative_to(root) for root in data_roots):
            raise ConfigError(f"seed_files[{i}]", f"{value!r} is outside the server's data "
                              "roots", "put it under a --data-root of the server")


class JobManager:
    """The jobs under ``results_dir``, a FIFO queue and ``max_running`` runner threads."""

    def __init__(self, results_dir: Path, runner: Runner, *, data_roots: list[Path] | None = None,
                 max_running: int = 1, allow_remote_code: bool = False,
                 check: Callable[[JobSpec], None] | None = None) -> None:
        self.results_dir = Path(results_dir).resolve()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        try:  # one server per results folder: a second would resume the first one's jobs
            self._held = take_lock(self.results_dir)
        except LockHeld:
            raise ConfigError("results-dir", f"{self.results_dir} is served by another server",
                              "use that server, stop it, or serve another --results-dir"
                              ) from None
        self.runner = runner
        self.check = check  # what the runner refuses (a device that denies its GPUs), at submit
        self.data_roots = [Path(r).resolve() for r in (data_roots or [Path.cwd()])]
        self.max_running = max_running
        self.allow_remote_code = allow_remote_code
        self.jobs: dict[str, Job] = {}
        self.broken: dict[str, BrokenJob] = {}  # folders whose files cannot be read
        self.queue: deque[str] = deque()
        self.lock = threading.Condition()
        self.stopping = False
        self._load()
        self.threads = [threading.Thread(target=self._work, name=f"job-runner-{i}", daemon=True)
                        for i in range(max_running)]
        for t in self.threads:
            t.start()

    # -- persistence ---------------------------------------------------------------------------
    def _load(self) -> None:
        """Jobs already on disk; those cut off by a stop go back in the queue."""
        for job in jobs_on_disk(self.results_dir):
            if isinstance(job, BrokenJob):
                self.broken[job.name] = job
                continue
            if job.state in ACTIVE and lock_holder(job.files) is None:  # else: run elsewhere
                job.state = QUEUED
                self.queue.append(job.name)
            self.jobs[job.name] = job

    # -- requests ------------------------------------------------------------------------------
    def submit(self, data: dict[str, Any]) -> Job:
        """Validate a spec (as in a YAML config) and queue it; nothing is written on error."""
        if not isinstance(data, dict):
            raise ConfigError("spec", "must be a JSON object", "send the YAML config's fields")
        data = {k: v for k, v in data.items() if k != "results_dir"}
        spec = _in_results(job_from_dict(data), self.results_dir)  # first: bounds every list
        if spec.name in self.broken:  # its folder exists: say why it is not a job to resume
            raise JobConflict(self.broken[spec.name].conflict)
        check_paths(data, self.data_roots)
        if data.get("trust_remote_code") and not self.allow_remote_code:
            raise ConfigError("trust_remote_code", "this server does not run a model folder's "
                              "own code", "start the server with --allow-remote-code")
        check_job(spec)  # model config, space, strategy, documents: before anything is written
        if self.check is not None:
            self.check(spec)
        with self.lock:
            if spec.name in self.jobs or spec.job_dir.exists():
                raise JobConflict(f"job {spec.name!r} already exists: resume it, or submit "
                                  "under another name")
            job = Job(spec)
            spec.job_dir.mkdir(parents=True)
            claim(JobDir(spec.job_dir), spec)
            job.save()
            self.jobs[job.name] = job
            self.queue.append(job.name)
            self.lock.notify_all()
        return job

    def get(self, name: str) -> Job:
        """The job; KeyError if there is none, JobConflict if its folder is broken."""
        job = self.jobs.get(name)
        if job is None:
            if name in self.broken:
                raise JobConflict(self.broken[name].conflict)
            raise KeyError(name)
        return job

    def listed(self) -> list[Job | BrokenJob]:
        """Every job, broken ones included, in the order they were submitted."""
        return sorted([*self.jobs.values(), *self.broken.values()], key=lambda j: j.submitted)

    def cancel(self, name: str) -> Job:
        """Cancel a queued job now, a running one between two evaluations; any other raises
        :class:`JobConflict` (the API's 409)."""
        job = self.get(name)
        with self.lock:
            if job.state == QUEUED:
                self.queue.remove(name)
                job.state, job.finished = CANCELLED, time.time()
                job.save()
            elif job.state == RUNNING:
                job.cancel.set()  # the runner stops at the next finished evaluation
            else:
                raise JobConflict(f"job {name!r} is {job.state}; only "
                                  f"{' or '.join(CANCELLABLE)} jobs can be cancelled")
        return job

    def resume(self, name: str) -> Job:
        """Queue a cancelled or failed job again (it continues from its ledger); any other raises
        :class:`JobConflict`."""
        job = self.get(name)
        with self.lock:
            if job.state not in RESUMABLE:
                raise JobConflict(f"job {name!r} is {job.state}; only cancelled or failed jobs "
                                  "can be resumed")
            try:  # an edited job.yaml is refused now, not by the runner after weights load
                check_claim(job.files, job.spec)
            except ConfigError as e:
                raise JobConflict(f"job {name!r} cannot resume: {e.problem}; restore its "
                                  "job.yaml, or submit the new spec under another name"
                                  ) from None
            job.state, job.error, job.finished = QUEUED, None, None
            job.cancel.clear()
            job.save()
            self.queue.append(name)
            self.lock.notify_all()
        return job

    def wait(self, name: str, timeout: float | None = None) -> Job:
        """Block until the job is no longer queued or running (for tests and scripts)."""
        deadline = None if timeout is None else time.time() + timeout
        with self.lock:
            while self.get(name).state in ACTIVE:
                left = None if deadline is None else deadline - time.time()
                if left is not None and left <= 0:
                    raise TimeoutError(name)
                self.lock.wait(left)
        return self.get(name)

    def close(self) -> None:
        """Stop taking jobs and cancel running ones; their ledgers keep every evaluation."""
        with self.lock:
            self.stopping = True
            for job in self.jobs.values():
                if job.state == RUNNING:
                    job.cancel.set()
            self.lock.notify_all()
        for t in self.threads:
            t.join(timeout=30)
        os.close(self._held)

    # -- runner threads ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.stopping:
                    self.lock.wait()
                if self.stopping:
                    return
                job = self.jobs[self.queue.popleft()]
                job.state, job.started, job.error = RUNNING, time.time(), None
                job.save()
            try:
                self.runner(job)
                state, error = FINISHED, None
            except JobCancelled:
                state, error = CANCELLED, None
            except ConfigError as e:
                state, error = FAILED, str(e)
            except Exception as e:  # the job fails, the server goes on
                traceback.print_exc()
                state, error = FAILED, f"{type(e).__name__}: {e}"
            with self.lock:
                if self.stopping and state == CANCELLED:
                    state = QUEUED  # cut off by a server stop: picked up again on restart
                job.state, job.error, job.finished = state, error, time.time()
                job.save()
                self.lock.notify_all()


def jobs_on_disk(results_dir: Path) -> list[Job | BrokenJob]:
    """The jobs in a results folder as their files describe them, by name; a damaged folder
    is a :class:`BrokenJob`, a folder without ``job.yaml`` no job."""
    found = (job_on_disk(folder) for folder in sorted(Path(results_dir).iterdir())
             if folder.is_dir())
    return [job for job in found if job is not None]


def job_on_disk(folder: Path) -> Job | BrokenJob | None:
    """The job in ``folder`` as its files describe it (a server's ``state.json``, or for a job
    run by ``longrope-search run`` what it wrote); None where the folder holds no job."""
    files = JobDir(folder)
    if not files.spec.exists() and not files.spec.is_symlink():
        return None
    try:
        return _read_job(files)
    except ConfigError as e:
        reason = f"{e.field}: {e.problem}" if e.field != "job" else e.problem
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}"  # what the checks above did not foresee
    return BrokenJob(files.name, " ".join(reason.split())[:500].rstrip("."), _mtime(files.spec))


def _read_job(files: JobDir) -> Job:
    if not files.spec.is_file():
        raise ConfigError("job", "job.yaml is not a file", "restore it")
    spec = load_job(files.spec)
    if spec.name != files.name:
        raise ConfigError("job", f"job.yaml names job {spec.name!r}, not {files.name!r}",
                          "rename the folder or restore its job.yaml")
    job = Job(_in_results(spec, files.path.parent))
    _check_files(files)
    saved = files.read_state()
    if saved is not None:
        if not isinstance(saved, dict) or saved.get("state") not in set(State) - {BROKEN}:
            raise ConfigError("job", "state.json has no valid state", "remove state.json")
        job.state, job.progress = saved["state"], dict(saved.get("progress") or {})
        job.error, job.submitted = saved.get("error"), float(saved.get("submitted") or 0.0)
        job.started, job.finished = saved.get("started"), saved.get("finished")
    else:  # a job run by `longrope-search run`, not by a server
        job.state, job.progress = _progress_from_tables(files.path)
        job.submitted = files.spec.stat().st_mtime
    return job


def _check_files(files: JobDir) -> None:
    """Read what the API serves from a job folder: its JSON files must be JSON objects and
    every factor table's footer must read (a cut-off write of an older version, a bad copy)."""
    for path in (files.state, files.best, files.comparison):
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("job", f"{path.name} cannot be read ({e})", "restore it") from None
        if not isinstance(data, dict):
            raise ConfigError("job", f"{path.name} is not a JSON object", "restore it")
    for _, table in files.tables():
        try:
            pq.read_metadata(table)
        except (OSError, ValueError) as e:
            where = table.relative_to(files.path) if table.is_relative_to(files.path) else table
            raise ConfigError("job", f"{where} is not a readable Parquet table "
                              f"({str(e).rstrip('.')})", "restore it") from None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _progress_from_tables(job_dir: Path) -> tuple[str, dict[str, Any]]:
    """State and progress of a job that no server ran, from what it wrote: finished when it
    has a best.json, running while a process holds its lock, otherwise cancelled (``resume``
    or the same ``run`` continues it from its ledger)."""
    gens = generation_summaries(job_dir)
    progress: dict[str, Any] = {
        "generation": gens[-1]["generation"] if gens else None,
        "evaluations": sum(g["new"] for g in gens), "pruned": sum(g["pruned"] for g in gens),
        "cost_tokens": gens[-1]["cost_spent_tokens"] if gens else None,
        "best_ppl": min((g["best_ppl"] for g in gens if g["best_ppl"] is not None),
                        default=None)}
    best = JobDir(job_dir).read_best()
    if best is not None:
        progress["best_ppl"] = best["search_ppl"]
        return FINISHED, progress
    return (RUNNING if lock_holder(JobDir(job_dir)) else CANCELLED), progress


def _in_results(spec: JobSpec, results_dir: Path) -> JobSpec:
    return spec.with_results_dir(results_dir)


def progress_hook(job: Job, *, save_every: float = 2.0) -> OnProgress:
    """``run_job``'s ``on_progress`` for a job: keeps its progress, stops it when cancelled."""
    last = [0.0]

    def hook(progress: Progress) -> None:
        job.progress = dict(progress)
        if time.time() - last[0] > save_every:
            last[0] = time.time()
            job.save()
        if job.cancel.is_set():
            raise JobCancelled(job.name)

    return hook
