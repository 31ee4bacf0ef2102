"""Strategies and the driver's logic on a pure stand-in fitness (no model forward).

The stand-in scores λ by its distance to a target curve, and a stand-in evaluator returns
results in a scrambled but reproducible order, as a Ray pool would. The model-backed paths
(in-process, Ray, service) are in test_search_run.py, test_ray.py and test_service.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longrope_search.errors import ConfigError
from longrope_search.search.driver import Driver, EndReason
from longrope_search.search.early_stopping import minibatch_rounds, prune_rule
from longrope_search.search.job import job_from_dict
from longrope_search.search.jobdir import JobDir
from longrope_search.search.outcome import best_of, finish
from longrope_search.search.plan import make_strategy, plan_job
from longrope_search.search.strategies import (
    STRATEGIES,
    SearchProblem,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_names,
)
from longrope_search.search.strategies.evolution import breed
from longrope_search.search.trial import GRADIENT, MINIBATCH, OK, Evaluation, Individual, ranked

BUILT_IN = ("evolution", "steady", "tpe", "cmaes", "random", "gradient", "memetic")
SMALL = {"extension_ratio": 8, "k_documents": 2, "seed": 0,
         "search": {"population": 10, "mutations": 4, "crossovers": 4, "top_k": 5,
                       "generations": 3}}

LONG_PLAN = {**SMALL["search"], "generations": 40}  # the budget, not generation T, ends it


class StandInEvaluator:
    """Scores by distance to a target λ curve; ``capacity`` candidates at once, returned one
    at a time in key order (not submit order), so order-dependent strategies are exercised."""

    def __init__(self, target: np.ndarray, capacity: int = 4, step: float = 0.01) -> None:
        self.target, self.capacity, self.step = target, capacity, step
        self.queue: list = []
        self.scored: list[str] = []
        self.minibatch: dict[str, tuple[int, int]] = {}  # of each key scored

    def free_slots(self) -> int:
        return self.capacity - len(self.queue)

    def submit(self, ind, cand, rule) -> None:
        self.queue.append((ind, cand, rule))

    def pending(self) -> int:
        return len(self.queue)

    def wait(self) -> list[tuple[Individual, Evaluation]]:
        item = min(self.queue, key=lambda w: w[0].key)
        self.queue.remove(item)
        ind, cand, _rule = item
        diff = cand.lambdas - self.target
        d = float(np.mean(diff**2)) + 0.001 * cand.n_hat
        self.scored.append(ind.key)
        extra = {"gradient": (2 * diff / diff.size).tolist()} if ind.task == GRADIENT else {}
        index, count = self.minibatch[ind.key] = ind.minibatch
        if count > 1:  # one of the 2 documents, which reads 0.01 lower or higher than the mean
            nll = (d + 0.01 * (2 * index - 1),)
            return [(ind, Evaluation(ind.key, nll, MINIBATCH, 1, 1024, extra))]
        return [(ind, Evaluation(ind.key, (d, d), OK, 2, 2 * 1024, extra))]

    def cancel(self) -> None:
        self.queue.clear()

    def compare(self, best) -> list[dict]:
        return [{"method": "best", "ppl": 1.0, "mean_nll": 0.0, "gain_vs_this_pct": 0.0}]


class Stop(Exception):
    pass


def make_driver(tmp_path: Path, strategy: str, *, stop_after: int | None = None,
                capacity: int = 4, target: float | None = None, **changes
                ) -> tuple[Driver, StandInEvaluator]:
    """A driver on the stand-in, whose best λ is ``target`` on every pair if given, else a line
    from 1 to 9."""
    spec = job_from_dict({"name": "job", **SMALL, "strategy": strategy,
                          "early_stopping": {"enabled": False}, "results_dir": str(tmp_path),
                          **changes})
    plan = plan_job(spec)
    job = JobDir(spec.job_dir)
    seen = [0]

    def progress(p: dict) -> None:
        seen[0] = p["evaluations"]
        if stop_after is not None and p["evaluations"] >= stop_after:
            raise Stop

    curve = (np.linspace(1.0, 9.0, plan.space.num_pairs) if target is None
             else np.full(plan.space.num_pairs, target))
    evaluator = StandInEvaluator(curve, capacity)
    driver = Driver(plan, make_strategy(plan), evaluator, job, progress)
    return driver, evaluator


def tables(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(JobDir(tmp_path / "job").generations)


@pytest.mark.parametrize("strategy", BUILT_IN)
def test_each_strategy_spends_its_budget_once_and_improves(tmp_path: Path, strategy: str
                                                           ) -> None:
    driver, evaluator = make_driver(tmp_path, strategy)
    driver.run()
    budget = driver.spec.evaluation_budget
    assert len(evaluator.scored) == len(set(evaluator.scored)) <= budget
    t = tables(tmp_path)
    new = t[t.operator != "parent"]
    # every candidate in exactly one table (repeats included), the whole budget unless the
    # strategy finished first
    assert len(new) == budget or (len(new) < budget and driver.strategy.finished)
    lam = np.stack(new.lambdas.to_numpy())
    assert np.all(np.diff(lam, axis=1) >= -1e-6)  # monotone
    assert new.cost_tokens.sum() == 2 * 1024 * len(set(new.candidate_id))
    spent = t.sort_values("cost_spent_tokens").cost_spent_tokens.to_numpy()
    assert spent[-1] == driver.cost == driver.progress()["cost_tokens"]
    seeds = new[new.operator.str.startswith("seed:")]
    assert set(seeds.operator) == {"seed:pi", "seed:ntk", "seed:yarn"}
    if strategy not in ("tpe", "cmaes", "random"):  # in 34 evaluations, local moves win
        assert new.mean_nll.min() < seeds.mean_nll.min()


@pytest.mark.parametrize("strategy", BUILT_IN)
def test_interrupted_run_resumes_into_the_same_search(tmp_path: Path, strategy: str) -> None:
    """Stop after 13 results (mid-generation, candidates in flight), resume with a fresh
    strategy and evaluator: nothing is scored twice and the tables equal an uninterrupted
    run's, also for steady-state evolution, whose children depend on the completion order."""
    reference, _ = make_driver(tmp_path / "a", strategy)
    reference.run()
    first, ev1 = make_driver(tmp_path / "b", strategy, stop_after=13)
    with pytest.raises(Stop):
        first.run()
    assert len(first.ledger.entries()) == 13  # stopped within one evaluation
    second, ev2 = make_driver(tmp_path / "b", strategy)
    second.run()
    assert not set(ev1.scored) & set(ev2.scored)
    keys = [e.key for e, _ in second.ledger.entries()]
    assert len(keys) == len(set(keys)) == len(reference.ledger.entries())
    cols = ["generation", "candidate_id", "operator", "parents", "n_hat", "mean_nll",
            "cost_spent_tokens"]
    a, b = tables(tmp_path / "a")[cols], tables(tmp_path / "b")[cols]
    assert a.astype(str).equals(b.astype(str))


def test_a_ledger_without_ask_counts_resumes_as_a_cache(tmp_path: Path) -> None:
    """Ledgers written before asks were recorded: every result found there is reused."""
    first, ev1 = make_driver(tmp_path, "evolution", stop_after=20)
    with pytest.raises(Stop):
        first.run()
    entries = first.ledger.entries()
    second, ev2 = make_driver(tmp_path, "evolution")
    second.replay([(e, None) for e, _ in entries])
    assert second.cache.keys() == {e.key for e, _ in entries}
    second.run()
    assert not set(ev1.scored) & set(ev2.scored)


def test_token_budget_stops_the_search(tmp_path: Path) -> None:
    driver, evaluator = make_driver(tmp_path, "steady", budget={"tokens": 15 * 2048})
    driver.run()
    assert len(evaluator.scored) == 15 + 3  # the budget, plus those in flight (capacity − 1)
    assert driver.cost >= 15 * 2048


def test_steady_state_breeds_whenever_asked(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, "steady", strategy_options={"refresh": 1})
    strategy = driver.strategy
    initial = [strategy.ask() for _ in range(10)]
    assert strategy.ask() is None  # nothing scored yet to breed from
    for i, ind in enumerate(initial[:4]):
        strategy.tell(ind, Evaluation(ind.key, (float(i),), OK, 1))
    assert strategy.ask() is None  # fewer than k = 5 parents: wait for more of generation 0
    strategy.tell(initial[4], Evaluation(initial[4].key, (9.0,), OK, 1))
    children = [strategy.ask() for _ in range(20)]  # no barrier from here on
    assert all(c is not None and c.operator in ("mutation", "crossover") for c in children)
    assert {p for c in children for p in c.parents} == {i.key for i in initial[:5]}
    assert len({c.key for c in initial + children}) == 30
    better = children[0]
    strategy.tell(better, Evaluation(better.key, (-1.0,), OK, 1))  # refresh 1: a parent at once
    assert any(better.key in strategy.ask().parents for _ in range(20))


def test_steady_state_refreshes_its_parents_at_algorithm_1s_cadence(tmp_path: Path) -> None:
    # refresh: N1 + N2 = 8 results; a plan long enough for every ask below
    driver, _ = make_driver(tmp_path, "steady", search=LONG_PLAN)
    strategy = driver.strategy
    initial = [strategy.ask() for _ in range(10)]
    for i, ind in enumerate(initial):
        strategy.tell(ind, Evaluation(ind.key, (float(i),), OK, 1))
    first = strategy.ask()
    better = [strategy.ask() for _ in range(7)]
    for ind in better:
        strategy.tell(ind, Evaluation(ind.key, (-1.0,), OK, 1))
    keys = {ind.key for ind in better}
    later = [strategy.ask() for _ in range(20)]  # 7 results told: the parents stand
    assert not keys & {p for c in later for p in c.parents}
    strategy.tell(first, Evaluation(first.key, (-2.0,), OK, 1))  # the 8th: refreshed
    assert {p for _ in range(20) for p in strategy.ask().parents} <= keys | {first.key}


def test_evolution_waits_for_its_generation(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, "evolution")
    strategy = driver.strategy
    gen0 = [strategy.ask() for _ in range(10)]
    assert strategy.ask() is None
    for i, ind in enumerate(gen0):
        strategy.tell(ind, Evaluation(ind.key, (float(i),), OK, 1))
    gen1 = [strategy.ask() for _ in range(13)]
    assert [i.operator for i in gen1[:5]] == ["parent"] * 5
    assert [i.key for i in gen1[:5]] == [i.key for i in gen0[:5]]  # the top-k
    assert {i.generation for i in gen1} == {1}


class BestOnly(Strategy):
    """A strategy from outside the package: the seeds, then mutations of the best only."""

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__(problem)
        self.rng = np.random.default_rng(problem.seed)
        self.seen = {g.key for _, g in problem.seed_candidates}
        self.done: list[Individual] = []
        self.results: dict[str, Evaluation] = {}
        self.seeds = [Individual(g, 0, f"seed:{n}") for n, g in problem.seed_candidates]

    def ask(self) -> Individual | None:
        if self.seeds:
            return self.seeds.pop(0)
        top = ranked(self.done, self.results)[:1]
        if not top:
            return None
        return breed(top, "mutation", len(self.done) // 10, self.problem.space, self.rng, 0.3,
                     self.seen)

    def tell(self, individual: Individual, evaluation: Evaluation) -> None:
        self.results[individual.key] = evaluation
        self.done.append(individual)


def test_a_strategy_registered_from_outside_runs(tmp_path: Path) -> None:
    register_strategy("best-only", BestOnly)
    try:
        assert "best-only" in strategy_names()
        driver, evaluator = make_driver(tmp_path, "best-only")
        driver.run()
        assert len(evaluator.scored) == driver.spec.evaluation_budget
    finally:
        del STRATEGIES["best-only"]
    with pytest.raises(ConfigError, match="strategy"):
        job_from_dict({"name": "x", **SMALL, "strategy": "best-only"})
    with pytest.raises(TypeError):
        register_strategy("bad", dict)  # type: ignore[arg-type]


def test_a_strategy_installed_as_an_entry_point_is_found(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A package that declares ``[project.entry-points."longrope_search.strategies"]``."""
    site = tmp_path / "site"
    (site / "my_strategies").mkdir(parents=True)
    (site / "my_strategies" / "__init__.py").write_text(
        "from tests.test_strategies import BestOnly as Annealing\n")
    dist = site / "my_strategies-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-strategies\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [longrope_search.strategies]
        annealing = my_strategies:Annealing
        """))
    monkeypatch.syspath_prepend(str(site))
    try:
        assert "annealing" in strategy_names()
        spec = job_from_dict({"name": "x", **SMALL, "strategy": "annealing"})
        assert get_strategy(spec.strategy) is BestOnly
    finally:
        STRATEGIES.pop("annealing", None)
        sys.modules.pop("my_strategies", None)


def test_isotonic_projection_is_the_closest_non_decreasing_vector() -> None:
    from longrope_search.search.strategies.gradient import isotonic

    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.normal(size=12)
        y = isotonic(x)
        assert np.all(np.diff(y) >= -1e-12)
        assert y.sum() == pytest.approx(x.sum())  # pooling keeps block means
        for _ in range(20):  # no other non-decreasing vector is closer
            z = np.sort(y + rng.normal(scale=0.1, size=12))
            assert np.sum((x - y) ** 2) <= np.sum((x - z) ** 2) + 1e-12
    assert np.array_equal(isotonic(np.arange(5.0)), np.arange(5.0))


def test_gradient_descends_then_sweeps_n_hat(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, "gradient", strategy_options={"steps": 12, "lr": 0.1},
                            budget={"evaluations": 1000})
    driver.run()
    assert driver.strategy.finished
    t = tables(tmp_path)
    steps = t[t.operator.isin(["gradient"]) | t.operator.str.startswith("seed:")]
    lam = np.stack(steps.lambdas.to_numpy())
    lo, hi = driver.plan.space.bounds()
    assert np.all(np.diff(lam, axis=1) >= -1e-9)  # projected: monotone…
    assert lam.min() >= lo[0] * 0.01 - 1e-9 and lam.max() <= hi[0] * 0.01 + 1e-9  # …in bounds
    for seed in ("pi", "ntk", "yarn"):  # every descent ends below where it started
        path = [steps[steps.operator == f"seed:{seed}"].mean_nll.iloc[0]]
        key = steps[steps.operator == f"seed:{seed}"].candidate_id.iloc[0]
        while (nxt := steps[steps.parents.map(lambda p, k=key: list(p) == [k])]).size:
            path.append(nxt.mean_nll.iloc[0])
            key = nxt.candidate_id.iloc[0]
        assert len(path) == 12 and path[-1] < 0.5 * path[0], (seed, path)
    sweep = t[t.operator == "gradient:n_hat"]
    assert sorted(sweep.n_hat) == sorted(driver.plan.space.n_hat_choices)
    _, ev = best_of(driver.history, driver.evals, driver.folder)
    assert ev.mean_nll == t[t.status == OK].mean_nll.min()  # a step or a grid candidate


def test_a_gradient_step_that_beats_the_grid_is_the_result(tmp_path: Path) -> None:
    """λ = 8.005 lies halfway between grid points, so only a step's exact λ gets near it."""
    driver, _ = make_driver(tmp_path, "gradient", target=8.005, seeds=["pi"],
                            strategy_options={"steps": 4, "lr": 0.001},
                            budget={"evaluations": 100})
    driver.run()
    ind, ev = best_of(driver.history, driver.evals, driver.folder)
    t = tables(tmp_path)
    assert ind.task == GRADIENT and ind.lambdas is not None
    assert ev.mean_nll < t[(t.status == OK) & (t.task != GRADIENT)].mean_nll.min()
    finish(driver.plan, driver.evaluator, driver.folder, driver.history, driver.evals,
           driver.ended())
    record = json.loads(JobDir(tmp_path / "job").best.read_text())
    assert record["lambdas"] == list(ind.lambdas)  # exact, off the grid
    assert not np.allclose(np.round(np.array(record["lambdas"]) / 0.01) * 0.01,
                           record["lambdas"], rtol=0, atol=1e-6)
    assert record["search_ppl"] == ev.ppl


def memetic_run(tmp_path: Path, evaluations: int, **options: float | bool) -> Driver:
    """A finished memetic run (lr 0.1) on the stand-in, ``evaluations`` its budget."""
    driver, _ = make_driver(tmp_path, "memetic", strategy_options={"lr": 0.1, **options},
                            budget={"evaluations": evaluations}, search=LONG_PLAN)
    driver.run()
    return driver


def memetic_tables(tmp_path: Path, evaluations: int, **options: float | bool
                   ) -> pd.DataFrame:
    """The tables of :func:`memetic_run`."""
    memetic_run(tmp_path, evaluations, **options)
    return tables(tmp_path).astype({"generation": int})


def test_memetic_polishes_its_best_every_g_generations_and_breeds_from_them(tmp_path: Path
                                                                            ) -> None:
    t = memetic_tables(tmp_path, 90, every=2, polish=2, steps=5, at_start=False)
    ok = t.set_index("candidate_id").mean_nll.to_dict()
    steps = t[t.operator == "gradient"]
    polished = t[t.operator == "gradient:polish"]
    # generations 2 and 4, then a last one while 90 − 74 evaluations remain (< 8 + 2·6)
    assert set(steps.generation) == {2, 4, 5} == set(polished.generation)
    started: set[str] = set()
    for g, rows in steps.groupby("generation"):
        ids = set(rows.candidate_id)
        first = rows[~rows.parents.map(lambda p, ids=ids: p[0] in ids)]
        assert len(first) == 2 and len(rows) == 2 * 5  # 2 descents, 5 steps each
        members = t[(t.generation == g) & ~t.operator.str.startswith("gradient")]
        fresh = members[~members.candidate_id.isin(started)].sort_values("mean_nll")
        starts = set(first.parents.map(lambda p: p[0]))
        assert starts == set(fresh.candidate_id.head(2))  # the best not polished before
        started |= starts
    step_parent = dict(zip(steps.candidate_id, steps.parents.map(lambda p: p[0]), strict=True))
    for _, row in polished.iterrows():  # the descent's best, on the grid, scored anew
        origin = row.parents[0]
        while origin in step_parent:  # back along the descent to the candidate it polished
            origin = step_parent[origin]
        assert origin in started and row.mean_nll < ok[origin]
    nxt = t[(t.generation == 3) & (t.operator == "parent")]
    best_polish = polished[polished.generation == 2].sort_values("mean_nll").candidate_id.iloc[0]
    assert best_polish in set(nxt.candidate_id)  # the next top-k keeps it


def test_memetic_at_start_polishes_the_first_generation_too(tmp_path: Path) -> None:
    t = memetic_tables(tmp_path, 60, every=3, polish=1, steps=3, at_start=True)
    polished = t[t.operator == "gradient:polish"]
    assert {0, 3} <= set(polished.generation)  # after the seeds' generation, then every 3
    first = t[(t.generation == 0) & ~t.operator.str.startswith("gradient")]
    assert polished[polished.generation == 0].mean_nll.min() < first.mean_nll.min()


def test_memetic_first_steps_lengthens_the_first_polish_only(tmp_path: Path) -> None:
    t = memetic_tables(tmp_path, 60, every=3, polish=1, steps=2, first_steps=5)
    steps = t[t.operator == "gradient"].groupby("generation").size().to_dict()
    assert steps[0] == 5 and all(n == 2 for g, n in steps.items() if g > 0), steps


def test_memetic_shortens_a_polish_the_budget_would_cut(tmp_path: Path) -> None:
    t = memetic_tables(tmp_path, 50, every=1, polish=1, steps=5, at_start=False)
    steps = t[t.operator == "gradient"].groupby("generation").size().to_dict()
    # 4 evaluations are left when generation 3's polish begins: 3 steps and its polished point
    assert steps == {1: 5, 2: 5, 3: 3}, steps
    assert sorted(t[t.operator == "gradient:polish"].generation) == [1, 2, 3]
    assert len(t[t.operator != "parent"]) == 50


def test_memetic_diverse_starts_from_the_best_then_the_farthest_of_the_n_best(tmp_path: Path
                                                                            ) -> None:
    driver = memetic_run(tmp_path, 60, every=2, polish=2, steps=2, diverse=5)
    t = tables(tmp_path).astype({"generation": int})
    searched = driver.plan.space.searched
    x = {k: np.log(np.asarray(lam)[searched]) for k, lam in zip(t.candidate_id, t.lambdas,
                                                                strict=True)}
    steps = t[t.operator == "gradient"]
    started: set[str] = set()
    for g, rows in steps.groupby("generation"):
        ids = set(rows.candidate_id)
        starts = set(rows[~rows.parents.map(lambda p, ids=ids: p[0] in ids)].parents.str[0])
        members = t[(t.generation == g) & ~t.operator.str.startswith("gradient")]
        pool = list(members[~members.candidate_id.isin(started)]
                    .sort_values("mean_nll").candidate_id.head(5))
        far = max(pool[1:], key=lambda k, b=pool[0]: float(np.linalg.norm(x[k] - x[b])))
        assert starts == {pool[0], far} and far != pool[1], g
        started |= starts


def test_memetic_minibatch_steps_take_turns_cost_a_share_and_rank_nowhere(tmp_path: Path
                                                                          ) -> None:
    driver, evaluator = make_driver(tmp_path, "memetic", budget={"evaluations": 60},
                                    strategy_options={"lr": 0.1, "every": 2, "polish": 1,
                                                      "steps": 5, "minibatches": 2})
    driver.run()
    t = tables(tmp_path).astype({"generation": int})
    steps = t[t.operator == "gradient"]
    assert set(steps.status) == {"minibatch"} and set(steps.documents_scored) == {1}
    assert set(steps.cost_tokens) == {1024}  # half of a complete evaluation's 2 × 1024
    for _, row in t[t.operator == "gradient:polish"].iterrows():
        path = [row.parents[0]]  # back along the descent, from its last step
        while (up := steps[steps.candidate_id == path[-1]].parents.iloc[0][0]) in set(
                steps.candidate_id):
            path.append(up)
        path = steps.set_index("candidate_id").loc[path[::-1]]
        assert len(path) == 4  # whole rounds of the 2 minibatches: 5 steps asked, 4 taken
        assert [evaluator.minibatch[k] for k in path.index] == [(0, 2), (1, 2)] * 2
        nll = np.array([np.mean(v) for v in path.nll])  # a step's NLL on its minibatch
        # its best point: the lowest mean of two consecutive steps, at the later of the two
        chosen = 1 + int(np.argmin((nll[1:] + nll[:-1]) / 2))
        grid = np.round(np.asarray(path.lambdas.iloc[chosen]) / 0.01) * 0.01
        assert np.asarray(row.lambdas) == pytest.approx(grid, abs=0.011)
        assert row.status == "ok" and row.documents_scored == 2
    best, ev = best_of(driver.history, driver.evals, driver.folder)
    assert best.lambdas is None and ev.status == "ok"  # a grid candidate, scored in full
    assert driver.best_ppl == pytest.approx(t[t.status == "ok"].ppl.min())


def test_minibatch_rounds_set_early_stoppings_bar(tmp_path: Path) -> None:
    """Two consecutive minibatch steps of a descent read every document once: early stopping
    takes them as one complete NLL vector, so the descents' low losses lower its bar."""
    driver, _ = make_driver(tmp_path, "memetic", budget={"evaluations": 60},
                            early_stopping={"enabled": True, "rule": "bound"},
                            strategy_options={"lr": 0.1, "every": 2, "polish": 1, "steps": 4,
                                              "minibatches": 2})
    driver.run()
    steps = {i.key: i for i in driver.history if driver.evals[i.key].status == MINIBATCH}
    rounds = minibatch_rounds(driver.history, driver.evals)
    assert len(rounds) == sum(1 for i in steps.values() if i.parents[0] in steps)
    for r in rounds:
        later = steps[r.key.removeprefix("round:")]
        pair = {later.minibatch[0]: later, **{steps[later.parents[0]].minibatch[0]:
                                              steps[later.parents[0]]}}
        assert r.status == OK and r.nll == tuple(driver.evals[pair[d].key].nll[0]
                                                  for d in (0, 1))
    last = max(i.generation for i in driver.history)
    complete = [driver.evals[i.key] for i in driver.history if i.generation < last]
    without = prune_rule(complete, driver.spec.search.top_k)
    assert driver._rule(last).threshold < without.threshold


@pytest.mark.parametrize(("strategy", "options"), [
    ("gradient", {"steps": 0}), ("gradient", {"steps": -1}), ("gradient", {"lr": -0.05}),
    ("gradient", {"lr": 1e300}), ("memetic", {"lr": -0.05}), ("memetic", {"every": 0}),
    ("memetic", {"polish": 0}), ("steady", {"refresh": -2})])
def test_an_out_of_range_strategy_option_is_refused(tmp_path: Path, strategy, options) -> None:
    """The gradient and memetic-lr cases ran (steps 0 took 1 step, a negative lr climbed the
    loss); the last three were refused by per-strategy checks the shared bounds replace."""
    (key,) = options
    with pytest.raises(ConfigError, match=rf"strategy_options\.{key}"):
        make_driver(tmp_path, strategy, strategy_options=options)


def test_a_bad_strategy_option_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"strategy_options\.step"):
        make_driver(tmp_path, "gradient", strategy_options={"step": 3})
    with pytest.raises(ConfigError, match=r"strategy_options\.lr: expected a number"):
        make_driver(tmp_path, "gradient", strategy_options={"lr": "fast"})
    with pytest.raises(ConfigError, match=r"strategy_options\.refresh"):
        make_driver(tmp_path, "steady", strategy_options={"refresh": -2})
    with pytest.raises(ConfigError, match=r"strategy_options\.steps"):
        make_driver(tmp_path, "memetic", strategy_options={"steps": 0})
    with pytest.raises(ConfigError, match=r"strategy_options\.first_steps"):
        make_driver(tmp_path, "memetic", strategy_options={"first_steps": -1})
    with pytest.raises(ConfigError, match=r"strategy_options\.diverse"):
        make_driver(tmp_path, "memetic", strategy_options={"diverse": -3})
    with pytest.raises(ConfigError, match=r"strategy_options\.minibatches.*k_documents 2"):
        make_driver(tmp_path, "memetic", strategy_options={"minibatches": 3})


@pytest.mark.parametrize("strategy", ["evolution", "steady", "memetic"])
def test_a_budget_beyond_the_plan_ends_with_generation_t(tmp_path: Path, strategy: str) -> None:
    """``budget.evaluations: 1e30`` ran evolution past its T generations until it was killed:
    the plan (P + T·(N1 + N2) candidates, T generations) ends the job, however much is left."""
    options = {"strategy_options": {"steps": 2, "polish": 1}} if strategy == "memetic" else {}
    driver, _ = make_driver(tmp_path, strategy, budget={"evaluations": 100_000}, **options)
    driver.run()
    cfg = driver.spec.search
    assert driver.ended() is EndReason.STRATEGY
    assert max(i.generation for i in driver.history) <= cfg.generations
    if strategy != "memetic":  # memetic's polish adds its steps to the plan's candidates
        assert driver.new_asks <= cfg.budget


def test_budgets_have_an_upper_bound() -> None:
    for budget, field in (({"evaluations": 10**30}, "budget.evaluations"),
                          ({"tokens": 10**30}, "budget.tokens")):
        with pytest.raises(ConfigError, match=rf"^{field}: must be ≤"):
            job_from_dict({"name": "j", "extension_ratio": 2, "budget": budget})
    with pytest.raises(ConfigError, match=r"^search\.generations: P \+ T"):
        job_from_dict({"name": "j", "extension_ratio": 2,
                       "search": {"generations": 100_000, "mutations": 1000}})
