"""The reports the API and the dashboard draw: perplexity against cost for any strategy.

Tables are written the way the search writes them (``write_generation``): a small job of two
tables, whose second one has a carried-over parent, a failed candidate and a pruned candidate
whose partial one-document perplexity lies below the best (it must never count as a result);
and the same job as schema v1 tables, which have no cost columns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from longrope_search.search.jobdir import JobDir
from longrope_search.search.space import Genome, SearchSpace
from longrope_search.search.tables import write_generation
from longrope_search.search.trial import GRADIENT, Evaluation, Individual
from longrope_search.service import reports

TARGET = 512  # tokens per document: the target length
SPACE = SearchSpace(num_pairs=4, extension_ratio=4.0, target_length=TARGET)

#: (table, operator, status, per-document NLL); a parent row names the row it carries over.
ROWS = [
    (0, "seed:pi", "ok", (4.0, 4.2, 4.1, 4.3)),
    (0, "seed:ntk", "ok", (3.6, 3.8, 3.7, 3.9)),
    (0, "tpe", "ok", (3.9, 4.0, 3.8, 4.1)),
    (0, "tpe", "pruned", (4.6,)),
    (1, "parent", 1, None),
    (1, "tpe", "ok", (3.5, 3.6, 3.4, 3.7)),
    (1, "tpe", "pruned", (2.0,)),  # one easy document: e^2 is far below the best
    (1, "tpe", "failed", ()),
    (1, "tpe", "ok", (3.55, 3.65, 3.5, 3.6)),
]
BEST = [math.exp(3.75), math.exp(3.55)]  # best complete candidate after each table
MEDIAN = [math.exp(3.95), math.exp(3.575)]  # of each table's complete rows, parent included
COST = [3 * 4 * TARGET + TARGET, 2 * 4 * TARGET + TARGET + TARGET // 2]  # per table
PRUNED_PPL = [math.exp(4.6), math.exp(2.0)]


def _cost(status: str, nll: tuple[float, ...]) -> int:
    """Documents scored × tokens; a failed evaluation spent half a document before failing."""
    return TARGET // 2 if status == "failed" else len(nll) * TARGET


def write_job(job_dir: Path, *, spec: dict | None = None) -> JobDir:
    """The job of ROWS in ``job_dir``, as schema v2 tables (cost in every row)."""
    job = JobDir(job_dir)
    job.path.mkdir(parents=True, exist_ok=True)
    spec = spec or {"target_length": TARGET, "original_length": 128}
    job.spec.write_text(yaml.safe_dump({"name": job.name, "strategy": "tpe", **spec}))
    individuals: dict[int, list[Individual]] = {}
    evaluations: dict[str, Evaluation] = {}
    cost_spent: dict[str, int] = {}
    spent = 0
    for i, (table, operator, status, nll) in enumerate(ROWS):
        if operator == "parent":
            individuals.setdefault(table, []).append(Individual(_genome(status), table, "parent"))
            continue
        ind = Individual(_genome(i), table, operator)
        ev = Evaluation(ind.key, nll, status, num_documents=4, cost_tokens=_cost(status, nll))
        spent += ev.cost_tokens
        cost_spent[ind.key] = spent
        individuals.setdefault(table, []).append(ind)
        evaluations[ind.key] = ev
    for table, inds in individuals.items():
        write_generation(job, table, inds, evaluations, SPACE, 1.2, cost_spent)
    return job


def as_schema_v1(job: JobDir) -> None:
    """Rewrite the job's tables without the cost columns, as version 1 wrote them."""
    for _, path in job.tables():
        pq.write_table(pq.read_table(path).drop_columns(list(reports.COST)), path)


def _genome(i: int) -> Genome:
    return Genome(np.array([100, 110 + i, 120 + i, 130 + i]), n_hat=0)


@pytest.fixture
def job(tmp_path) -> JobDir:
    return write_job(tmp_path / "tpe-job")


def test_curve_is_best_so_far_and_median_against_cost(job):
    curve = reports.cost_curve(job.path)
    assert curve["generation"] == [0, 1] and curve["evaluations"] == [4, 8]
    assert curve["cost_spent_tokens"] == [COST[0], COST[0] + COST[1]]
    assert curve["cost_known"] and not curve["cost_estimated"]
    # the pruned candidate's partial perplexity (e^2) is not a result: the best stays e^3.55
    assert curve["best_ppl"] == pytest.approx(BEST)
    assert curve["median_ppl"] == pytest.approx(MEDIAN)


def test_candidates_carry_their_cost(job):
    cands = reports.candidates(job.path)
    new = [r for r in ROWS if r[1] != "parent"]
    assert cands["operator"] == [r[1] for r in new]  # the parent row is not a new candidate
    assert cands["cost_tokens"] == [_cost(r[2], r[3]) for r in new]
    assert cands["cost_spent_tokens"] == list(np.cumsum(cands["cost_tokens"]))
    pruned = [p for p, s in zip(cands["ppl"], cands["status"], strict=True) if s == "pruned"]
    assert pruned == pytest.approx(PRUNED_PPL) and min(pruned) < min(BEST)


def test_generation_summaries_have_cost(job):
    gens = reports.generation_summaries(job.path)
    assert [g["cost_tokens"] for g in gens] == COST
    assert [g["cost_spent_tokens"] for g in gens] == [COST[0], sum(COST)]
    assert [(g["new"], g["ok"], g["pruned"], g["failed"]) for g in gens] == \
        [(4, 3, 1, 0), (4, 2, 1, 1)]
    parent = reports.generation_rows(job.path, 1)[0]
    assert parent["operator"] == "parent" and parent["cost_tokens"] == 0


def test_schema_v1_tables_get_an_estimated_cost(job):
    as_schema_v1(job)
    assert "cost_tokens" not in pq.read_schema(job.table(0)).names
    cands = reports.candidates(job.path)
    # documents scored × target length (from job.yaml); a failed one scored no document
    docs = [len(r[3]) for r in ROWS if r[1] != "parent"]
    assert cands["cost_tokens"] == [d * TARGET for d in docs]
    assert cands["cost_spent_tokens"] == list(np.cumsum(cands["cost_tokens"]))
    curve = reports.cost_curve(job.path)
    assert curve["cost_known"] and curve["cost_estimated"]
    assert curve["cost_spent_tokens"] == [COST[0], COST[0] + COST[1] - TARGET // 2]
    assert curve["best_ppl"] == pytest.approx(BEST)
    assert reports.generation_rows(job.path, 0)[0]["cost_spent_tokens"] is None  # as written


def test_schema_v1_prefers_best_json_target_length(job):
    as_schema_v1(job)
    job.best.write_text('{"target_length": 1024}')
    assert reports.candidates(job.path)["cost_tokens"][0] == 4 * 1024


def test_without_a_target_length_the_curve_counts_evaluations(tmp_path):
    job = write_job(tmp_path / "old", spec={"extension_ratio": 4})  # L' needs the model
    as_schema_v1(job)
    curve = reports.cost_curve(job.path)
    assert not curve["cost_known"] and curve["cost_spent_tokens"] == [None, None]
    assert curve["best_ppl"] == pytest.approx(BEST)  # at evaluations 4 and 8
    assert reports.generation_summaries(job.path)[0]["cost_tokens"] is None


def test_api_and_summary_show_cost(tmp_path):
    from fastapi.testclient import TestClient

    from longrope_search.io import write_json
    from longrope_search.service.app import create_app
    from longrope_search.service.cli import _line
    from longrope_search.service.jobs import JobManager

    results = tmp_path / "results"
    write_job(results / "from-tables")  # run outside a server: progress from its tables
    served = write_job(results / "served")
    write_json(served.state, {"state": "cancelled", "progress": {
        "strategy": "tpe", "evaluations": 8, "budget": 16, "cost_tokens": sum(COST),
        "budget_tokens": 20_000, "generation": 1}})
    manager = JobManager(results, lambda job: None)
    try:
        client = TestClient(create_app(manager))
        assert client.get("/api/jobs/served/curve").json() == \
            reports.cost_curve(served.path)
        job = client.get("/api/jobs/served").json()
        assert (job["strategy"], job["cost_tokens"], job["budget_tokens"]) == \
            ("tpe", sum(COST), 20_000)
        assert job["fraction_done"] == pytest.approx(sum(COST) / 20_000)  # tokens run out first
        assert "11.5k/20k tok" in _line(job)
        job = client.get("/api/jobs/from-tables").json()
        assert (job["strategy"], job["cost_tokens"], job["budget_tokens"]) == \
            ("tpe", sum(COST), None)
        assert "11.5k tok" in _line(job)
    finally:
        manager.close()


def test_descents_follow_gradient_steps_and_kinds_tell_operators_apart(tmp_path):
    """Two descents whose steps interleave in the tables (a seed's, and a memetic polish of a
    mutation on minibatches of the documents), a polished child, and an ordinary mutation: each
    descent is one line of its own steps in order, a minibatch step's loss included though it
    is no result; every candidate's kind says how it was made."""
    job = JobDir(tmp_path / "memetic")
    job.path.mkdir()
    mutation = Individual(_genome(0), 0, "mutation")
    inds, evals, spent = [mutation], {}, {}

    def step(i: int, operator: str, parent: Individual, nll: float, minibatch: int = 0
             ) -> Individual:
        """A step on all 4 documents, or on minibatch ``minibatch`` − 1 of 2."""
        ind = Individual(_genome(i), 1, operator, (parent.key,), (1.0, 1.5 + i, 2.0 + i, 3.0),
                         GRADIENT, (minibatch - 1, 2) if minibatch else (0, 1))
        inds.append(ind)
        docs, status = (2, "minibatch") if minibatch else (4, "ok")
        evals[ind.key] = Evaluation(ind.key, (nll,) * docs, status, docs, 3 * docs * TARGET)
        return ind

    evals[mutation.key] = Evaluation(mutation.key, (4.0,) * 4, "ok", 4, 4 * TARGET)
    a0 = step(1, "seed:yarn", mutation, 3.9)  # a descent from a seed (gradient strategy)
    b0 = step(2, "gradient", mutation, 3.3, minibatch=1)  # a polish of the mutation (memetic)
    a1, b1 = step(3, "gradient", a0, 3.7), step(4, "gradient", b0, 3.2, minibatch=2)
    a2 = step(5, "gradient", a1, 3.5)
    polished = Individual(_genome(6), 1, "gradient:polish", (b1.key,))
    inds.append(polished)
    evals[polished.key] = Evaluation(polished.key, (3.55,) * 4, "ok", 4, 4 * TARGET)
    total = 0
    for ind in inds:
        total += evals[ind.key].cost_tokens
        spent[ind.key] = total
    write_generation(job, 0, inds[:1], evals, SPACE, 1.2, spent)
    write_generation(job, 1, inds[1:], evals, SPACE, 1.2, spent)

    curve = reports.cost_curve(job.path)
    lines = {d["start"]: d for d in curve["descents"]}
    assert set(lines) == {"seed:yarn", f"polish of {mutation.key[:8]}"}
    assert lines["seed:yarn"]["ppl"] == pytest.approx([math.exp(v) for v in (3.9, 3.7, 3.5)])
    assert lines["seed:yarn"]["cost_spent_tokens"] == [spent[k.key] for k in (a0, a1, a2)]
    assert lines[f"polish of {mutation.key[:8]}"]["ppl"] == pytest.approx(
        [math.exp(3.3), math.exp(3.2)])
    assert min(curve["best_ppl"]) == pytest.approx(math.exp(3.5))  # a2: minibatch steps rank not
    kinds = dict(zip(*(reports.candidates(job.path)[k] for k in ("candidate_id", "kind")),
                     strict=True))
    assert kinds[mutation.key] == "mutation" and kinds[polished.key] == "polished"
    assert {kinds[s.key] for s in (a0, a1, a2, b0, b1)} == {"gradient step"}
    assert reports.cost_curve(write_job(tmp_path / "tpe").path)["descents"] == []
