"""The durable ledger: every finished evaluation, appended (and fsynced) the moment it finishes.

It is an Optuna journal file (one study per job, one trial per candidate: λ and n̂ as params,
per-document NLL and provenance as user attributes). Optuna's journal appends one JSON line per
operation under a file lock and fsyncs it, which is what survives a SIGKILL; its SQLite storage
is about 100× slower with 64–128 parameters per trial. Any Optuna tool can open the file.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState, create_trial

from longrope_search.search.evolution import FAILED, OK, PRUNED, Evaluation, Individual
from longrope_search.search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

_STATES = {OK: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL}


def open_study(path: str | Path, job: str) -> optuna.Study:
    """The job's study in a journal file (created on first use)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return optuna.create_study(storage=JournalStorage(backend), study_name=job,
                               direction="minimize", load_if_exists=True)


class Ledger:
    """Append evaluations; read them all back on resume, keyed by genome key."""

    def __init__(self, path: str | Path, job: str, space: SearchSpace) -> None:
        self.study = open_study(path, job)
        self.space = space
        low = min(1.0, space.lambda_min)
        self.distributions = {f"lambda_{i}": FloatDistribution(low, space.lambda_max)
                              for i in range(space.num_pairs)}
        self.distributions["n_hat"] = CategoricalDistribution(list(space.n_hat_choices))

    def record(self, ind: Individual, ev: Evaluation, attention_factor: float) -> None:
        lam = self.space.lambdas(ind.genome)
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
                        "attention_factor": attention_factor, **ev.extra},
        )
        self.study.add_trial(trial)

    def evaluations(self) -> dict[str, Evaluation]:
        """Every recorded evaluation by genome key (the last one wins if a key repeats)."""
        out = {}
        for t in self.study.get_trials(deepcopy=False):
            a = t.user_attrs
            if "key" not in a:
                continue
            extra = {k: v for k, v in a.items() if k in ("worker", "seconds", "timestamp")}
            out[a["key"]] = Evaluation(a["key"], tuple(a["nll"]), a["status"],
                                       a["num_documents"], extra)
        return out

    def __len__(self) -> int:
        return len(self.study.get_trials(deepcopy=False))
