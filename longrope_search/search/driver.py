"""The one search driver: any strategy, any evaluator, one ledger, one set of tables.

The strategy says what to try (:mod:`~longrope_search.search.strategies`), early stopping says
when to stop scoring a candidate (:mod:`~longrope_search.search.early_stopping`), the evaluator
scores (:mod:`~longrope_search.search.evaluator` in this process, or a Ray pool). The driver
owns everything else:

* **the ledger**: every finished evaluation is appended (and fsynced) before anything else
  sees it, with its cost and the number of asks made so far;
* **resume**: a job run again replays its ledger through the strategy in the recorded order of
  asks and tells (see :meth:`Driver.replay`), scoring only what was never finished, so a killed
  run continues exactly where it stopped, for every strategy;
* **the budget** in evaluations and, optionally, forward tokens;
* **the tables**: a generation's Parquet table is written once all its candidates are back;
* **progress and cancel**: ``on_progress`` after each evaluation (raise in it to stop);
* **the end of the job**: ``best.json`` (the lowest complete evaluation, on the grid or a gradient
  step's exact λ), the best λ re-scored with n̂ = 0 when n̂ > 0, and the held-out comparison
  (``comparison.json``).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from longrope_search.errors import ConfigError
from longrope_search.io import write_json
from longrope_search.model import LoadedModel
from longrope_search.rope import Candidate
from longrope_search.search.early_stopping import PruneRule, minibatch_rounds, prune_rule
from longrope_search.search.evaluator import Evaluator, local_evaluators
from longrope_search.search.job import JobSpec
from longrope_search.search.jobdir import JobDir, claim
from longrope_search.search.ledger import Ledger
from longrope_search.search.outcome import best_record, comparison_semantics
from longrope_search.search.plan import Plan, comparison_documents, prepare
from longrope_search.search.space import Genome
from longrope_search.search.strategies import Strategy
from longrope_search.search.tables import migrate as migrate_tables
from longrope_search.search.tables import write_generation
from longrope_search.search.trial import (
    FAILED,
    OK,
    PRUNED,
    SCORE,
    Evaluation,
    Individual,
    lambdas_of,
    ranked,
)

OnProgress = Callable[[dict[str, Any]], None]
N_HAT_ONLY_PYTHON = ("n̂ is applied by longrope_search.apply_factors only (deploy: python); "
                     "no inference engine implements it, and the exports rescale every position")


class EndReason(StrEnum):
    """Why a search ended: one of its two budgets ran out, or its strategy had nothing more to
    propose (Algorithm 1's generations done, a descent converged)."""

    CANDIDATES = "candidate budget spent"  # budget.evaluations (default: the generations')
    TOKENS = "token budget spent"  # budget.tokens, every forward token counted
    STRATEGY = "strategy finished"


@dataclass
class SearchResult:
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


class Driver:
    """One run of a job: ask the strategy, score on the evaluator, record, tell, repeat."""

    def __init__(self, plan: Plan, strategy: Strategy, evaluator: Evaluator, ledger: Ledger,
                 job_dir: JobDir, on_progress: OnProgress | None = None,
                 progress: bool = False) -> None:
        spec = plan.spec
        self.plan, self.spec, self.strategy, self.evaluator = plan, spec, strategy, evaluator
        self.ledger, self.job_dir, self.on_progress = ledger, job_dir, on_progress
        self.budget = spec.evaluation_budget
        self.budget_tokens = spec.budget.tokens
        self.evals: dict[str, Evaluation] = {}  # every result told so far, by genome key
        self.pending: dict[str, list[Individual]] = {}  # asked, not yet told (repeats share)
        self.cache: dict[str, Evaluation] = {}  # ledger results not (yet) replayed
        self.history: list[Individual] = []  # new candidates told, in order
        self.rules: dict[int, PruneRule | None] = {}  # per generation, fixed at its first ask
        self.members: dict[int, list[Individual]] = defaultdict(list)  # per table, ask order
        self.untold: Counter[int] = Counter()
        self.unwritten: set[int] = set()
        self.cost_spent: dict[str, int] = {}  # key → job's forward tokens when recorded
        self.asks = self.new_asks = self.cost = 0
        self.done = False
        self.best_ppl = math.inf
        self.replaying = False
        self.stats = Counter(evaluations=0, reused=0, pruned=0, failed=0, documents=0)
        # the bar counts what the budget counts: forward tokens when it has a token budget
        self.bar = tqdm(total=self.budget_tokens or self.budget, desc=spec.name,
                        unit="tok" if self.budget_tokens else "cand",
                        unit_scale=bool(self.budget_tokens),
                        disable=not progress)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except BaseException:
            self.evaluator.cancel()  # a stopped search leaves nothing behind in the evaluator
            raise
        finally:
            self.bar.close()

    def _run(self) -> None:
        entries = self.ledger.entries()
        self.replay(entries)
        if entries:
            self._resumed(len(entries))
        for inds in self.pending.values():  # in flight when the last run stopped
            self._submit(inds[0])
        self._report()
        while True:
            self._fill()
            if not self.evaluator.pending():
                break
            for ind, ev in self.evaluator.wait():
                self.ledger.record(ind, ev, self.plan.attention_factor, self.asks)
                self.stats.update(evaluations=1, documents=len(ev.nll),
                                  pruned=ev.status == PRUNED, failed=ev.status == FAILED)
                self._complete(ind.key, ev)
                self._report()
        self._flush_tables(final=True)
        self.done = True

    def _resumed(self, replayed: int) -> None:
        """Say that the job resumes, and start the bar's rate after what was replayed."""
        self.bar.write(f"{self.spec.name}: resuming, {replayed} evaluations from the ledger "
                       "replayed (not scored again)", file=sys.stderr)
        self.bar.n = self.bar.initial = self._bar_position()
        self.bar.last_print_n = self.bar.n
        self.bar.start_t = self.bar.last_print_t = time.time()

    def replay(self, entries: list[tuple[Evaluation, int | None]]) -> None:
        """Feed the ledger back through the strategy: before the j-th recorded result is told,
        ask until as many candidates were asked as when it was recorded. A strategy that is
        deterministic for its seed and call order proposes the same candidates again. Where it
        does not (a ledger without ask counts, written by an older version), the rest of the
        ledger becomes a cache: a candidate found there is told its result unscored."""
        self.replaying = True
        for i, (ev, asks) in enumerate(entries):
            if asks is None or not self._ask_until(asks) or ev.key not in self.pending:
                self.cache = {e.key: e for e, _ in entries[i:]}
                break
            self._complete(ev.key, ev, from_ledger=True)
        self.replaying = False
        for key in [k for k in self.pending if k in self.cache]:
            self._complete(key, self.cache.pop(key), from_ledger=True)

    def _ask_until(self, asks: int) -> bool:
        while self.asks < asks:
            if self._ask() is None:
                return False
        return True

    def _fill(self) -> None:
        """Ask while the evaluator has room and the budget is not spent."""
        while not self._budget_spent() and self.evaluator.free_slots() > 0:
            if self._ask() is None:
                return

    def _budget_spent(self) -> bool:
        return self.ended() not in (None, EndReason.STRATEGY)

    def ended(self) -> EndReason | None:
        """Which budget is spent (candidates first); STRATEGY once the loop ended without."""
        if self.new_asks >= self.budget:
            return EndReason.CANDIDATES
        if self.budget_tokens is not None and self.cost >= self.budget_tokens:
            return EndReason.TOKENS
        return EndReason.STRATEGY if self.done else None

    # -- one candidate --------------------------------------------------------------------------
    def _ask(self) -> Individual | None:
        ind = self.strategy.ask()
        if ind is None:
            return None
        self.asks += 1
        self.new_asks += ind.is_new
        g = ind.generation
        if g not in self.rules:
            self.rules[g] = self._rule(g)
        self.members[g].append(ind)
        self.untold[g] += 1
        self.unwritten.add(g)
        self._flush_tables()
        key = ind.key
        if key in self.evals:  # scored before (a carried-over parent, a repeat)
            self._tell(ind, self.evals[key], reused=True)
        elif key in self.pending:  # already in flight: told when that one is back
            self.pending[key].append(ind)
        else:
            self.pending[key] = [ind]
            if key in self.cache:
                self._complete(key, self.cache.pop(key), from_ledger=True)
            elif not self.replaying:
                self._submit(ind)
        return ind

    def candidate(self, ind: Individual, name: str = "") -> Candidate:
        """What an individual is scored as: its λ (exact, or its genome's), n̂ and the job's m."""
        return Candidate(lambdas_of(ind, self.plan.space), ind.genome.n_hat,
                         self.plan.attention_factor, name)

    def _submit(self, ind: Individual) -> None:
        rule = self.rules[ind.generation] if ind.task == SCORE else None  # a gradient: all docs
        self.evaluator.submit(ind, self.candidate(ind), rule)

    def _rule(self, generation: int) -> PruneRule | None:
        """Early stopping for a generation, from the complete results of earlier ones."""
        es = self.spec.early_stopping
        if not es.enabled:
            return None
        earlier = [i for i in self.history if i.generation < generation]
        return prune_rule([*(self.evals[i.key] for i in earlier),
                           *minibatch_rounds(earlier, self.evals)],
                          self.spec.evolution.top_k, es.rule, margin=es.margin, z=es.z)

    def _complete(self, key: str, ev: Evaluation, from_ledger: bool = False) -> None:
        """A result for a pending key: account its cost, tell everyone who asked for it."""
        self.evals[key] = ev
        self.cost += ev.cost_tokens
        self.cost_spent[key] = self.cost
        for ind in self.pending.pop(key):
            self._tell(ind, ev, reused=from_ledger)

    def _tell(self, ind: Individual, ev: Evaluation, reused: bool) -> None:
        self.strategy.tell(ind, ev)
        if ind.is_new:
            self.history.append(ind)
            if ev.status == OK:
                self.best_ppl = min(self.best_ppl, ev.ppl)
            self.stats.update(reused=reused)
        self.untold[ind.generation] -= 1
        self._flush_tables()

    # -- tables and progress --------------------------------------------------------------------
    def _flush_tables(self, final: bool = False) -> None:
        """Write each table whose candidates are all back once the strategy has moved on to a
        later one (or the search is over)."""
        last = max(self.members, default=0)
        for g in sorted(self.unwritten):
            if self.untold[g] == 0 and (final or g < last):
                stage = self.spec.stage
                write_generation(self.job_dir, g, self.members[g], self.evals, self.plan.space,
                                 self.plan.attention_factor, self.cost_spent,
                                 stage.seeded_from if stage else None)
                self.unwritten.discard(g)

    def progress(self) -> dict[str, Any]:
        return {"strategy": self.spec.strategy, "generation": max(self.members, default=None),
                **self.stats, "candidates": self.new_asks, "cost_tokens": self.cost,
                "budget": self.budget,
                "budget_tokens": self.budget_tokens, "best_ppl": self.best_ppl}

    def _bar_position(self) -> int:
        """Where the bar stands: tokens spent under a token budget, else candidates told."""
        return min(self.bar.total, self.cost if self.budget_tokens else len(self.history))

    def _report(self) -> None:
        p = self.progress()
        self.bar.n = self._bar_position()
        self.bar.set_postfix(gen=p["generation"], evaluations=len(self.history),
                             pruned=p["pruned"], cost=f"{self.cost / 1e6:.2f}M tok",
                             best=f"{p['best_ppl']:.3f}", refresh=False)
        self.bar.refresh()
        if self.on_progress:
            self.on_progress(p)

    # -- the end of the job ---------------------------------------------------------------------
    def best(self) -> tuple[Individual, Evaluation]:
        """The lowest complete evaluation: a grid candidate, or a gradient step at its exact λ
        (scored on every document like any candidate, so as much a result as one on the grid;
        the progress bar, the tables' best so far and the benchmarks rank it the same way)."""
        top = ranked(self.history, self.evals)
        if not top:
            raise RuntimeError("no candidate was scored completely: see the failed ones in "
                               f"{self.job_dir.generations}")
        return top[0], self.evals[top[0].key]

    def score_alone(self, ind: Individual) -> Evaluation:
        """Score one individual outside the search (not in the ledger, not told to the
        strategy)."""
        self.evaluator.submit(ind, self.candidate(ind), None)
        while True:
            for done, ev in self.evaluator.wait():
                if done is ind:
                    return ev

    def finish(self) -> tuple[Candidate, Evaluation, list[dict[str, Any]], Path]:
        """best.json, the n̂ = 0 re-score, and the held-out comparison."""
        ind, ev = self.best()
        plan = self.plan
        best = self.candidate(ind, "best")
        record = best_record(plan, best, ev)
        record["ended"] = self.ended()
        record["seed_ppl"] = {name: self.evals[g.key].ppl for name, g in plan.seeds
                              if g.key in self.evals and self.evals[g.key].status == OK}
        if best.n_hat:  # what an inference engine (none supports n̂) will actually get
            record["n_hat_note"] = N_HAT_ONLY_PYTHON
            zero = Individual(Genome(ind.genome.grid, 0), -1, "n_hat=0", lambdas=ind.lambdas)
            known = self.evals.get(zero.key)
            record["search_ppl_without_n_hat"] = (
                known if known and known.status == OK else self.score_alone(zero)).ppl
        docs = comparison_documents(self.spec)
        rows = self.evaluator.compare(best, docs)
        write_json(self.job_dir.comparison, {
            "documents": str(docs), "deploy": self.spec.deploy,
            "lengths": list(plan.comparison_lengths),
            "semantics": comparison_semantics(self.spec), "rows": rows})
        write_json(self.job_dir.best, record)  # last: a job with best.json has finished
        self.job_dir.remove_temporary()
        return best, ev, rows, docs


def run_search(spec: JobSpec, *, evaluator: Evaluator | None = None,
               loaded: LoadedModel | None = None, progress: bool = True,
               on_progress: OnProgress | None = None,
               prepared: tuple[Plan, Strategy] | None = None) -> SearchResult:
    """Run (or resume) a job to its end with the strategy it names.

    Everything cheap is checked before any weights load or the job folder is written: the
    spec, the model's config, the tokenizer and the documents (``prepared``: what
    :func:`~longrope_search.search.plan.prepare` gave a caller that has just checked them, so
    they are not read twice). ``evaluator`` defaults to scoring in this process on ``loaded``
    (loaded here when not given). ``on_progress`` gets the running counts after every
    evaluation; an exception it raises stops the search between two evaluations, with
    everything finished so far in the ledger.
    """
    if spec.stages:
        raise ConfigError("stages", "a chained job runs stage by stage",
                          "run it with longrope_search.search.chain.run_job (the CLI and the "
                          "service do)")
    t0 = time.time()
    plan, strategy = prepared or prepare(spec)
    job_dir = JobDir.of(spec)
    claim(job_dir, spec)
    migrate_tables(job_dir)  # a job resumed from before schema version 4
    job_dir.remove_temporary()  # what a killed run was writing: rewritten from the ledger
    if evaluator is None:
        with local_evaluators(loaded)(spec) as local:
            return _search(plan, strategy, local, job_dir, progress, on_progress, t0)
    return _search(plan, strategy, evaluator, job_dir, progress, on_progress, t0)


def _search(plan: Plan, strategy: Strategy, evaluator: Evaluator, job_dir: JobDir,
            progress: bool, on_progress: OnProgress | None, t0: float) -> SearchResult:
    spec = plan.spec
    ledger = Ledger(job_dir.ledger, spec.name, plan.space)
    driver = Driver(plan, strategy, evaluator, ledger, job_dir, on_progress, progress)
    driver.run()
    best, ev, rows, docs = driver.finish()
    s = driver.stats
    return SearchResult(best, ev, job_dir.path, s["evaluations"], s["pruned"], s["reused"],
                        s["documents"], driver.cost, time.time() - t0, rows, docs,
                        driver.ended(), driver.new_asks, driver.budget, driver.budget_tokens)


def summarize(result: SearchResult) -> str:
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
