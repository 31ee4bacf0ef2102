"""What the API and the dashboard show of a job, read from its Parquet tables and best.json.

Columns go out as arrays (one list per column), the shape chart libraries plot directly. Rows of
carried-over parents (operator ``parent``) count in a generation's best and median, but each
candidate appears once in the per-candidate columns: in the generation (table) that made it.

Cost is in forward tokens (see :mod:`longrope_search.search.trial`). Tables of schema v1 predate
it: there each new candidate's cost is estimated as documents scored × the job's target length
(from best.json or job.yaml), and the cost spent as the running sum in (generation, row) order;
without a known target length their cost is None. ``cost_estimated`` says when that happened.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from longrope_search.search.job import load_job
from longrope_search.search.jobdir import JobDir
from longrope_search.search.ledger import recorded
from longrope_search.search.trial import (
    FAILED,
    GRADIENT,
    MINIBATCH,
    OK,
    PARENT,
    PRUNED,
    Operator,
    seed_name,
)

COST = ("cost_tokens", "cost_spent_tokens")
CANDIDATE_COLUMNS = ("candidate_id", "operator", "status", "ppl", "n_hat", *COST)
BEST_COLUMNS = ("candidate_id", "operator", "status", "ppl", "mean_nll", "nll", "lambdas",
                "n_hat", "attention_factor")
# what the dashboard colours candidates by: a gradient step, else the operator without its
# detail (seed:yarn → seed, gradient:polish → polished, gradient:n_hat → n̂ sweep)
KINDS = {Operator.POLISH: "polished", Operator.N_HAT_SWEEP: "n̂ sweep"}


def operator_kind(operator: str, task: str | None) -> str:
    """The family a candidate is drawn in: how it was made."""
    if task == GRADIENT:
        return "gradient step"
    return KINDS.get(operator, operator.split(":")[0])


@dataclass(frozen=True)
class _Table:
    """Some columns of one generation's table, cost filled in for schema v1 and counted on
    from the stages before in a chain."""

    generation: int  # a chain's: numbered on across its stages
    cols: dict[str, list[Any]]
    estimated: bool  # schema v1: the cost columns are estimates
    stage: int | None = None  # the chain stage
    live: bool = False  # from the ledger of a running job: the generation's table is not out

    def new_rows(self) -> list[int]:
        """Rows of candidates this table made (not carried-over parents)."""
        return [i for i, op in enumerate(self.cols["operator"]) if op != PARENT]

    def spent(self) -> int | None:
        """The job's cost spent when this table's last evaluation was recorded."""
        return max((c for c in self.cols["cost_spent_tokens"] if c is not None), default=None)


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _target_length(job: JobDir) -> int | None:
    """L' of a job: best.json's, else the spec's (target_length, or ratio × original length)."""
    best = job.read_best() or {}
    if best.get("target_length"):
        return int(best["target_length"])
    if not job.spec.is_file():
        return None
    spec = load_job(job.spec)
    if spec.target_length:
        return spec.target_length
    if spec.extension_ratio and spec.original_length:
        return round(spec.extension_ratio * spec.original_length)
    return None


def _estimate_cost(cols: dict[str, list[Any]], target: int | None, spent: int) -> int:
    """Fill a v1 table's cost columns (see the module docstring); returns the cost spent after
    it."""
    cols["cost_tokens"], cols["cost_spent_tokens"] = [], []
    for op, docs in zip(cols["operator"], cols["documents_scored"], strict=True):
        if op == PARENT:
            cost, at = 0, None
        elif target is None:
            cost, at = None, None
        else:
            cost = (docs or 0) * target
            spent += cost
            at = spent
        cols["cost_tokens"].append(cost)
        cols["cost_spent_tokens"].append(at)
    return spent


def _read_tables(job: JobDir, columns: Sequence[str]) -> list[_Table]:
    """``columns`` (and operator and cost) of every table, in generation order."""
    out: list[_Table] = []
    spent, target, offset, stage = 0, None, 0, None
    for g, path in job.tables():
        present = set(pq.read_schema(path).names)
        wanted = {*columns, "candidate_id", "operator", "parents", "task", "documents_scored",
                  "partial_ppl", *COST} & present
        cols = pq.read_table(path, columns=sorted(wanted)).to_pydict()
        if "ppl" in cols and "partial_ppl" in cols:  # schema v4: here ppl is the score as
            cols["ppl"] = [p if p is not None else q  # recorded, read with its status
                           for p, q in zip(cols["ppl"], cols.pop("partial_ppl"), strict=True)]
        estimated = not set(COST) <= present
        if estimated:
            target = target or _target_length(job)
            spent = _estimate_cost(cols, target, spent)
        if JobDir.stage_of(path) != stage:  # a chain's next stage counts on from the last
            stage, offset = JobDir.stage_of(path), spent
        cols["cost_spent_tokens"] = [None if c is None else c + offset
                                     for c in cols["cost_spent_tokens"]]
        out.append(_Table(g, cols, estimated, stage))
        spent = max(spent, out[-1].spent() or 0)
    _infer_tasks(out)
    return out + _live_tables(job, out, columns)


def _live_tables(job: JobDir, tables: list[_Table], columns: Sequence[str]) -> list[_Table]:
    """The evaluations of an unfinished job that its ledger holds and no table yet (a table is
    written when its generation ends): one table per generation, marked ``live``. A chain's
    stages keep their own ledgers; they show at their tables."""
    if job.tables_root is not None or job.read_best() is not None or job.stages.is_dir():
        return []
    written = {k for t in tables for k in t.cols["candidate_id"]}
    spent, by_generation = 0, defaultdict(list)
    for row in recorded(job.ledger):
        spent += row["cost_tokens"] or 0
        if row["candidate_id"] not in written:
            by_generation[row["generation"]].append({**row, "cost_spent_tokens": spent})
    wanted = {*columns, "candidate_id", "operator", "parents", "task", "documents_scored",
              *COST}
    for rows in by_generation.values():  # ppl here: the score as recorded (see _read_tables)
        for r in rows:
            r["ppl"] = r["ppl"] if r["ppl"] is not None else r["partial_ppl"]
    return [_Table(g, {k: [r.get(k) for r in rows] for k in wanted}, False, None, live=True)
            for g, rows in sorted(by_generation.items())]


def _infer_tasks(tables: list[_Table]) -> None:
    """Tables before schema v3 have no ``task``: there a gradient step is a row of operator
    ``gradient``, or a seed row that such a row names as its parent (the first step of a
    descent; only the gradient strategy wrote steps then)."""
    if all("task" in t.cols for t in tables):
        return
    starts = {p for t in tables for op, ps in zip(t.cols["operator"], t.cols["parents"],
                                                  strict=True)
              if op == Operator.GRADIENT for p in ps or []}
    for t in tables:
        if "task" not in t.cols:
            t.cols["task"] = [GRADIENT if op == Operator.GRADIENT or (seed_name(op) is not None and
                                                               cid in starts) else None
                              for op, cid in zip(t.cols["operator"], t.cols["candidate_id"],
                                                 strict=True)]


def generation_summaries(job_dir: Path) -> list[dict[str, Any]]:
    """Per generation: candidates by status, best and median perplexity of the population, the
    new candidates' cost and the job's cost spent by the end of the table (forward tokens)."""
    return _summaries(_read_tables(JobDir(job_dir), ["status", "ppl"]))


def _summaries(tables: list[_Table]) -> list[dict[str, Any]]:
    out = []
    spent: int | None = None
    for t in tables:
        ok = [p for p, s in zip(t.cols["ppl"], t.cols["status"], strict=True) if s == OK]
        new = [t.cols["status"][i] for i in t.new_rows()]
        costs = [c for c in (t.cols["cost_tokens"][i] for i in t.new_rows()) if c is not None]
        if t.spent() is not None:
            spent = max(spent or 0, t.spent())
        out.append({"generation": t.generation, "population": len(t.cols["status"]),
                    "new": len(new), "ok": new.count(OK), "pruned": new.count(PRUNED),
                    "failed": new.count(FAILED),
                    "best_ppl": _finite(min(ok)) if ok else None,
                    "median_ppl": _finite(float(np.median(ok))) if ok else None,
                    "cost_tokens": sum(costs) if costs or not new else None,
                    "cost_spent_tokens": spent, "cost_estimated": t.estimated,
                    "stage": t.stage, "live": t.live})
    return out


def generation_rows(job_dir: Path, generation: int) -> list[dict[str, Any]] | None:
    """Every row of one generation's table as written (None when it has no table yet); a v1
    table's rows get the cost columns as None."""
    path = dict(JobDir(job_dir).tables()).get(generation)
    if path is None:
        return None
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["timestamp"] = r["timestamp"].isoformat() if r["timestamp"] else None
        r["generation"] = generation
        for k in ("ppl", "mean_nll", "partial_ppl"):
            r[k] = _finite(r.get(k))
        for k in COST:
            r.setdefault(k, None)
    return rows


def candidates(job_dir: Path) -> dict[str, list[Any]]:
    """Each candidate once, in the generation that made it, with its cost and the job's cost
    spent when it was recorded: columns for a scatter plot."""
    return _candidates(_read_tables(JobDir(job_dir), CANDIDATE_COLUMNS))


def _candidates(tables: list[_Table]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {"generation": [], **{k: [] for k in CANDIDATE_COLUMNS},
                                  "kind": []}
    for t in tables:
        for i in t.new_rows():
            cols["generation"].append(t.generation)
            for k in CANDIDATE_COLUMNS:
                cols[k].append(t.cols[k][i])
            cols["kind"].append(operator_kind(t.cols["operator"][i], t.cols["task"][i]))
    cols["ppl"] = [_finite(p) for p in cols["ppl"]]
    return cols


def _descents(tables: list[_Table]) -> list[dict[str, Any]]:
    """Each gradient descent's steps in order: a chain of gradient steps, each the parent of
    the next. ``start`` names where it began (a seed, or the candidate a memetic search
    polished); x is the job's cost spent when the step was recorded."""
    chains: dict[str, dict[str, Any]] = {}
    chain_of: dict[str, str] = {}  # step → the first step of its descent
    for t in tables:
        c = t.cols
        for i in t.new_rows():
            if c["task"][i] != GRADIENT:
                continue
            step, parent = c["candidate_id"][i], next(iter(c["parents"][i] or []), None)
            first = chain_of.get(parent, step)
            chain_of[step] = first
            if first == step:
                start = c["operator"][i] if c["operator"][i] != Operator.GRADIENT else (
                    f"polish of {parent[:8]}" if parent else Operator.GRADIENT.value)
                chains[step] = {"start": start, "generation": t.generation,
                                "cost_spent_tokens": [], "ppl": []}
            # a minibatch step's ppl is on its documents only: the line zigzags between them
            ppl = _finite(c["ppl"][i]) if c["status"][i] in (OK, MINIBATCH) else None
            chains[first]["cost_spent_tokens"].append(c["cost_spent_tokens"][i])
            chains[first]["ppl"].append(ppl)
    return list(chains.values())


def cost_curve(job_dir: Path) -> dict[str, Any]:
    """Best-so-far and median perplexity against cost spent, for any strategy: one point per
    table (generation), at the cost spent by its end.

    ``best_ppl`` is the best complete ("ok") evaluation recorded by then (a pruned candidate's
    partial score never counts); ``median_ppl`` the median of the table's complete evaluations.
    ``evaluations`` counts new candidates so far, the x axis to use when ``cost_known`` is
    false (a v1 table without a known target length). ``descents``: each gradient descent's
    perplexity against cost, step by step (gradient and memetic strategies).
    """
    tables = _read_tables(JobDir(job_dir), (*CANDIDATE_COLUMNS, "parents"))  # once
    gens, cands = _summaries(tables), _candidates(tables)
    evaluations = list(accumulate(g["new"] for g in gens))
    ends = [g["cost_spent_tokens"] for g in gens]
    known = None not in ends
    # Where each candidate and each table end lie on the x axis: cost, else evaluation count.
    at = cands["cost_spent_tokens"] if known else range(1, len(cands["ppl"]) + 1)
    ok = [(x, p) for x, p, s in zip(at, cands["ppl"], cands["status"], strict=True)
          if s == OK and p is not None and x is not None]
    return {"generation": [g["generation"] for g in gens], "evaluations": evaluations,
            "cost_spent_tokens": ends,
            "best_ppl": [min((p for x, p in ok if x <= end), default=None)
                         for end in (ends if known else evaluations)],
            "median_ppl": [g["median_ppl"] for g in gens],
            "cost_known": known, "cost_estimated": any(g["cost_estimated"] for g in gens),
            "descents": _descents(tables)}


def _latest_long_stage(job: JobDir, stages: set[int | None]) -> set[int | None]:
    """A chain's candidates compare within a stage only (another length, or short factors):
    the latest long stage that has tables; {None} for any other job."""
    if stages <= {None}:
        return {None}
    chain = load_job(job.spec).stages
    long = [i for i in stages if i is not None and chain[i].factors == "long"]
    return {max(long, default=None)}


def best(job_dir: Path, top_k: int) -> dict[str, Any] | None:
    """The best candidate so far (best.json once finished), the seeds' λ and the top-k's n̂;
    and the short factors of its recovery job (``<job>-short``) once that has finished."""
    job = JobDir(job_dir)
    tables = _read_tables(job, BEST_COLUMNS)  # the live ones too: a running job has a best
    stages = _latest_long_stage(job, {t.stage for t in tables})
    every = [{k: t.cols[k][i] for k in t.cols} for t in tables if t.stage in stages
             for i in t.new_rows()]
    rows = sorted((r for r in every if r["status"] == OK),
                  key=lambda r: (r["mean_nll"], r["candidate_id"]))
    if not rows:
        return None
    top = rows[0]
    seeds: dict[str, list[float]] = {}
    for r in sorted(every, key=lambda r: r["status"] != OK):  # a pruned seed still has λ
        if (name := seed_name(r["operator"])) is not None:
            seeds.setdefault(name, [float(v) for v in r["lambdas"]])
    out: dict[str, Any] = {
        "candidate_id": top["candidate_id"], "lambdas": [float(v) for v in top["lambdas"]],
        "n_hat": top["n_hat"], "attention_factor": top["attention_factor"],
        "ppl": _finite(top["ppl"]), "nll": top["nll"], "operator": top["operator"],
        "seed_lambdas": seeds, "top_k_n_hat": [r["n_hat"] for r in rows[:top_k]],
        "final": False,
    }
    record = job.read_best()
    if record is not None:
        out.update({k: record[k] for k in ("search_ppl", "seed_ppl", "search_ppl_without_n_hat",
                                           "original_length", "target_length",
                                           "extension_ratio", "ended") if k in record})
        out["final"] = True
    comparison = job.read_comparison()
    if comparison is not None:
        out["heldout"] = comparison
    recovery = job.recovery(record).read_best()
    if recovery is not None and recovery.get("factors") == "short":
        out["short_lambdas"] = [float(v) for v in recovery["lambdas"]]
        out["short_job"] = recovery.get("job")
    return out


def tables_file(job_dir: Path, fmt: str) -> bytes:
    """Every factor table of a job as one file (``parquet`` or ``csv``): the rows as written,
    with ``generation`` (and ``stage``) as integer columns also for tables from before
    schema version 4. Lists (λ, per-document NLL) stay lists in Parquet; CSV drops them."""
    job = JobDir(job_dir)
    parts = []
    for _, path in job.tables():
        t = pq.read_table(path)
        if "generation" not in t.column_names:  # schema ≤ 3: the number was the folder's
            t = t.append_column("generation", pa.array([job.generation_of(path)] * len(t),
                                                       pa.int32()))
            t = t.append_column("stage", pa.array([job.stage_of(path)] * len(t), pa.int32()))
        parts.append(t)
    table = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
    out = io.BytesIO()
    if fmt == "csv":
        flat = [n for n, f in zip(table.column_names, table.schema, strict=True)
                if not pa.types.is_list(f.type) and not pa.types.is_fixed_size_list(f.type)]
        pacsv.write_csv(table.select(flat), out)
    else:
        pq.write_table(table, out)
    return out.getvalue()
