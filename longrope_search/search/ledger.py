"""The durable ledger: every finished evaluation, appended (and fsynced) the moment it finishes.

It is an Optuna journal file (one study per job, one trial per candidate: λ and n̂ as params,
per-document NLL and provenance as user attributes). Optuna's journal appends one JSON line per
operation under a file lock and fsyncs it, which is what survives a SIGKILL; its SQLite storage
is about 100× slower with 64–128 parameters per trial. Any Optuna tool can open the file.

Each record also holds what an exact resume needs: the evaluation's cost in forward tokens and
``asks``, how many candidates the strategy had proposed when this result was recorded. The
driver replays the strategy's asks and tells in that interleaving, so a strategy whose
proposals depend on the order results arrived in continues exactly as it would have.

A crash or a full disk during an append can leave a torn last line. Opening the ledger to
write repairs it first (:func:`repair`): a trailing partial line is cut, a line that is not JSON
is dropped, and what was dropped is logged; at most the evaluation being written is lost, and it
is scored again. The journal's lock is an ``flock``, which the kernel releases when its holder
dies, so a killed run leaves no stale lock behind for the next one to wait out.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, json_to_distribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._storage import JournalOperation  # the journal's record kinds
from optuna.trial import TrialState, create_trial

from longrope_search.io import atomic_write
from longrope_search.search.space import SearchSpace
from longrope_search.search.trial import (
    FAILED,
    GRADIENT,
    MINIBATCH,
    OK,
    PRUNED,
    SCORE,
    Evaluation,
    Individual,
    lambdas_of,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# a minibatch step's NLL is no value of the objective: to Optuna it is a partial evaluation
_STATES = {OK: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL,
           MINIBATCH: TrialState.PRUNED}
log = logging.getLogger(__name__)
# what an evaluation brings back beside its NLL
EXTRA = ("worker", "seconds", "timestamp", "gradient", "needle_nll")


class FlockLock:
    """The journal's lock as an ``flock`` on ``<ledger>.lock``: released by the kernel when
    the process holding it dies, so nothing stale is left to wait for. (Optuna's file locks,
    ``acquire``/``release``, are duck-typed; their base class is not public.)"""

    def __init__(self, path: str) -> None:
        self.path = f"{path}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Block until this process holds the ledger's lock."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        """Let the next process in."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def repair(path: Path) -> list[bytes]:
    """Drop a torn last line and any line that is not a journal record (a JSON object with
    Optuna's ``op_code`` and ``worker_id``); return what was dropped."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty unless the last append was torn
    dropped = [tail] if tail else []
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        is_record = isinstance(record, dict) and {"op_code", "worker_id"} <= record.keys()
        (kept if is_record else dropped).append(line)
    if dropped:
        atomic_write(path, lambda p: p.write_bytes(b"".join(k + b"\n" for k in kept)))
        for line in dropped:
            log.warning("ledger %s: dropped a torn or foreign record (%d bytes): %r…", path,
                        len(line), line[:80])
    return dropped


def open_study(path: str | Path, job: str) -> optuna.Study:
    """The job's study in a journal file (created on first use)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path), lock_obj=FlockLock(str(path)))
    return optuna.create_study(storage=JournalStorage(backend), study_name=job,
                               direction="minimize", load_if_exists=True)


def recorded(path: str | Path) -> list[dict[str, Any]]:
    """Every evaluation in a ledger, in the order recorded, as a factor table row holds it
    (``candidate_id``, ``generation``, ``operator``, ``parents``, ``task``, ``status``,
    ``nll``, ``mean_nll``, ``ppl``, ``lambdas``, ``n_hat``, ``cost_tokens``, ``worker``, …).
    Reads only and takes no lock (Optuna's reader stops before a line still being appended),
    so a server shows a running job's evaluations as they finish."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for log in JournalFileBackend(str(path)).read_logs(0):
        a = log.get("user_attrs") or {}
        if log.get("op_code") != JournalOperation.CREATE_TRIAL or "key" not in a:
            continue
        params = log["params"]
        n_hat = json_to_distribution(log["distributions"]["n_hat"]).to_external_repr(
            params["n_hat"])
        ev = Evaluation(a["key"], tuple(a["nll"]), a["status"], a["num_documents"],
                        a.get("cost_tokens", 0))
        complete = ev.status == OK and bool(ev.nll)
        rows.append({
            "candidate_id": ev.key, "generation": a["generation"], "operator": a["operator"],
            "parents": list(a.get("parents") or []),
            "task": GRADIENT if "gradient" in a else SCORE, "status": ev.status,
            "nll": list(ev.nll), "documents_scored": len(ev.nll),
            "mean_nll": ev.mean_nll if complete else None, "ppl": ev.ppl if complete else None,
            "partial_ppl": ev.ppl if ev.nll and not complete else None,
            "lambdas": [params[f"lambda_{i}"] for i in range(len(params) - 1)], "n_hat": n_hat,
            "attention_factor": a.get("attention_factor"), "cost_tokens": ev.cost_tokens,
            **{k: a.get(k) for k in ("worker", "seconds", "timestamp")}})
    return rows


class Ledger:
    """Append evaluations; read them all back on resume, keyed by genome key."""

    def __init__(self, path: str | Path, job: str, space: SearchSpace) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FlockLock(str(path))
        lock.acquire()  # no append of another run can interleave with the repair
        try:
            repair(path)
        finally:
            lock.release()
        self.study = open_study(path, job)
        self.space = space
        low = min(1.0, space.lambda_min)
        self.distributions = {f"lambda_{i}": FloatDistribution(low, space.lambda_max)
                              for i in range(space.num_pairs)}
        self.distributions["n_hat"] = CategoricalDistribution(list(space.n_hat_choices))

    def record(self, ind: Individual, ev: Evaluation, attention_factor: float,
               asks: int | None = None) -> None:
        """Append one finished evaluation (λ, n̂, status, NLL per document) to the journal."""
        lam = lambdas_of(ind, self.space)
        params: dict = {f"lambda_{i}": float(v) for i, v in enumerate(lam)}
        params["n_hat"] = ind.genome.n_hat
        trial = create_trial(
            state=_STATES[ev.status],
            value=ev.mean_nll if ev.status == OK else None,
            params=params, distributions=self.distributions,
            intermediate_values={j: float(v) for j, v in enumerate(ev.nll)},
            user_attrs={"key": ind.key, "generation": ind.generation, "operator": ind.operator,
                        "parents": list(ind.parents), "nll": [float(v) for v in ev.nll],
                        "num_documents": ev.num_documents, "status": ev.status,
                        "cost_tokens": ev.cost_tokens, "asks": asks,
                        "attention_factor": attention_factor, **ev.extra},
        )
        self.study.add_trial(trial)

    def entries(self) -> list[tuple[Evaluation, int | None]]:
        """Every recorded evaluation in the order it was recorded, with its ``asks`` (None in
        ledgers written before it was kept; their cost is estimated as documents × L')."""
        out = []
        for t in self.study.get_trials(deepcopy=False):
            a = t.user_attrs
            if "key" not in a:
                continue
            extra = {k: v for k, v in a.items() if k in EXTRA}
            out.append((Evaluation(a["key"], tuple(a["nll"]), a["status"], a["num_documents"],
                                   a.get("cost_tokens", len(a["nll"]) * self.space.target_length),
                                   extra), a.get("asks")))
        return out

    def evaluations(self) -> dict[str, Evaluation]:
        """Every recorded evaluation by genome key (the last one wins if a key repeats)."""
        return {ev.key: ev for ev, _ in self.entries()}

    def __len__(self) -> int:
        return len(self.study.get_trials(deepcopy=False))
