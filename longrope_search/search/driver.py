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
* **progress and cancel**: ``on_progress`` after each evaluation (raise in it to stop).

What a finished loop leaves (``history``, ``evals``) becomes ``best.json`` and the held-out
comparison in :mod:`~longrope_search.search.outcome`; :mod:`~longrope_search.search.run` starts
the loop and calls it.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from enum import StrEnum
from typing import NotRequired, TypedDict

from tqdm.auto import tqdm

from longrope_search.search.early_stopping import PruneRule, minibatch_rounds, prune_rule
from longrope_search.search.evaluator import Evaluator
from longrope_search.search.jobdir import JobDir
from longrope_search.search.ledger import Ledger
from longrope_search.search.plan import Plan
from longrope_search.search.strategies import Strategy
from longrope_search.search.tables import write_generation
from longrope_search.search.trial import (
    FAILED,
    OK,
    PRUNED,
    SCORE,
    Evaluation,
    Individual,
    candidate,
)


class Progress(TypedDict):
    """A running search's counts, after every evaluation (``on_progress``, the service's
    job status and the dashboard read them)."""

    strategy: str
    generation: int | None  # the latest generation asked
    evaluations: int  # scored by this run
    reused: int  # told from the ledger or a repeat, not scored
    pruned: int
    failed: int
    documents: int  # document forwards by this run
    candidates: int  # new candidates asked, against the candidate budget
    cost_tokens: int  # the job's forward tokens so far, earlier runs included
    budget: int
    budget_tokens: int | None
    best_ppl: float  # inf until a candidate is scored completely
    stage: NotRequired[int]  # a chain's stage: its index …
    stage_name: NotRequired[str]  # … and its folder's name


OnProgress = Callable[[Progress], None]


class EndReason(StrEnum):
    """Why a search ended: one of its two budgets ran out, or its strategy had nothing more to
    propose (Algorithm 1's generations done, a descent converged)."""

    CANDIDATES = "candidate budget spent"  # budget.evaluations (default: the generations')
    TOKENS = "token budget spent"  # budget.tokens, every forward token counted
    STRATEGY = "strategy finished"


class Driver:
    """One run of a job: ask the strategy, score on the evaluator, record, tell, repeat."""

    def __init__(self, plan: Plan, strategy: Strategy, evaluator: Evaluator, folder: JobDir,
                 on_progress: OnProgress | None = None, progress: bool = False) -> None:
        spec = plan.spec
        self.plan, self.spec, self.strategy, self.evaluator = plan, spec, strategy, evaluator
        self.ledger = Ledger(folder.ledger, spec.name, plan.space)
        self.folder, self.on_progress = folder, on_progress
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
        """Search until the strategy is done or the budget is spent; a stopped search cancels what
        the evaluator still holds."""
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

    def _submit(self, ind: Individual) -> None:
        rule = self.rules[ind.generation] if ind.task == SCORE else None  # a gradient: all docs
        self.evaluator.submit(ind, candidate(ind, self.plan.space, self.plan.attention_factor),
                              rule)

    def _rule(self, generation: int) -> PruneRule | None:
        """Early stopping for a generation, from the complete results of earlier ones."""
        es = self.spec.early_stopping
        if not es.enabled:
            return None
        earlier = [i for i in self.history if i.generation < generation]
        return prune_rule([*(self.evals[i.key] for i in earlier),
                           *minibatch_rounds(earlier, self.evals)],
                          self.spec.search.top_k, es.rule, margin=es.margin, z=es.z)

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
                write_generation(self.folder, g, self.members[g], self.evals, self.plan.space,
                                 self.plan.attention_factor, self.cost_spent,
                                 stage.seeded_from if stage else None)
                self.unwritten.discard(g)

    def progress(self) -> Progress:
        """The running counts, as ``on_progress`` and the service's API get them."""
        s = self.stats
        return Progress(strategy=self.spec.strategy, generation=max(self.members, default=None),
                        evaluations=s["evaluations"], reused=s["reused"], pruned=s["pruned"],
                        failed=s["failed"], documents=s["documents"], candidates=self.new_asks,
                        cost_tokens=self.cost, budget=self.budget,
                        budget_tokens=self.budget_tokens, best_ppl=self.best_ppl)

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
