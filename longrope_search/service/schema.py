"""The API's responses, as OpenAPI describes them (the requests are :class:`JobRequest`).

Each model names the fields a client may rely on; a response may carry more (``extra``), so
that a field added to a report does not break an older schema's client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from longrope_search.service.states import State


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(_Open):
    ok: bool
    version: str
    jobs: int = Field(description="jobs the server knows")


class JobSummary(_Open):
    """A job's state and progress (``GET /api/jobs``, and what submit/cancel/resume return)."""

    name: str
    state: State
    submitted: float = Field(description="Unix time")
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    generation: int | None = Field(None, description="the latest generation asked")
    generations: int = Field(description="evolution.generations of the spec")
    evaluations: int = Field(description="candidates scored by this server's run of the job")
    reused: int = Field(description="results replayed from the ledger or repeated")
    pruned: int
    candidates: int = Field(description="candidates counted against the candidate budget")
    budget: int = Field(description="the candidate budget")
    strategy: str
    cost_tokens: int | None = Field(None, description="forward tokens spent, all runs")
    budget_tokens: int | None = Field(None, description="the token budget (None: none)")
    fraction_done: float | None = None
    best_ppl: float | None = None
    eta_seconds: float | None = None
    stages: list[str] = []
    stage: int | None = None
    stage_name: str | None = None


class GenerationSummary(_Open):
    """One factor table (a generation), or the evaluations of one not written yet (``live``)."""

    generation: int
    population: int
    new: int
    ok: int
    pruned: int
    failed: int
    best_ppl: float | None
    median_ppl: float | None
    cost_tokens: int | None
    cost_spent_tokens: int | None
    cost_estimated: bool
    stage: int | None
    live: bool = Field(False, description="from the ledger: the generation is still running")


class JobDetail(JobSummary):
    spec: dict[str, Any] = Field(description="the job's spec, every field")
    generation_summaries: list[GenerationSummary]


class Candidates(_Open):
    """Each candidate once, as columns of equal length (a scatter plot's data)."""

    generation: list[int]
    candidate_id: list[str]
    operator: list[str]
    status: list[str]
    ppl: list[float | None] = Field(description="complete scores; a pruned one's is partial")
    n_hat: list[int]
    cost_tokens: list[int | None]
    cost_spent_tokens: list[int | None]
    kind: list[str] = Field(description="what the dashboard colours by")


class Curve(_Open):
    """Best-so-far and median perplexity against cost spent, one point per table."""

    generation: list[int]
    evaluations: list[int]
    cost_spent_tokens: list[int | None]
    best_ppl: list[float | None]
    median_ppl: list[float | None]
    cost_known: bool
    cost_estimated: bool
    descents: list[dict[str, Any]]


class Best(_Open):
    """The best candidate so far (``final`` once the job wrote best.json)."""

    candidate_id: str
    lambdas: list[float]
    n_hat: int
    attention_factor: float
    ppl: float | None
    operator: str
    seed_lambdas: dict[str, list[float]]
    top_k_n_hat: list[int]
    final: bool
    search_ppl: float | None = None
    ended: str | None = Field(None, description="why the search ended (finished jobs)")
    heldout: dict[str, Any] | None = Field(None, description="comparison.json: by length")


class TableRow(_Open):
    """A row of a generation's factor table as written (search.tables, schema version 4)."""

    job: str
    candidate_id: str
    parents: list[str] | None
    operator: str
    lambdas: list[float]
    n_hat: int
    attention_factor: float
    nll: list[float] | None
    documents_scored: int | None
    mean_nll: float | None
    ppl: float | None = Field(description="the complete score; None when pruned or failed")
    partial_ppl: float | None = Field(None, description="a pruned candidate's, on its documents")
    status: str
    generation: int
    new: bool | None = Field(None, description="False: a parent carried over")
    cost_tokens: int | None = None
    cost_spent_tokens: int | None = None
    task: str | None = None
