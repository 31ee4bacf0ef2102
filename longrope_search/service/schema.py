"""The API's responses, as OpenAPI describes them (the requests are :class:`JobRequest`).

Each model names the fields a client may rely on; a response may carry more (``extra``), so
that a field added to a report does not break an older schema's client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from longrope_search.search.trial import Status
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
    generations: int = Field(description="search.generations of the spec")
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
    status: list[Status]
    ppl: list[float | None] = Field(description="complete scores; a pruned one's is partial")
    n_hat: list[int]
    cost_tokens: list[int | None]
    cost_spent_tokens: list[int | None]
    kind: list[str] = Field(description="what the dashboard colours by")


class Descent(_Open):
    """One gradient descent's steps in order (gradient and memetic jobs)."""

    start: str = Field(description="where it began: a seed's operator, or the polished one")
    generation: int
    cost_spent_tokens: list[int | None]
    ppl: list[float | None] = Field(description="a minibatch step's is on its documents only")


class Curve(_Open):
    """Best-so-far and median perplexity against cost spent, one point per table."""

    generation: list[int]
    evaluations: list[int]
    cost_spent_tokens: list[int | None]
    best_ppl: list[float | None]
    median_ppl: list[float | None]
    cost_known: bool
    cost_estimated: bool
    descents: list[Descent]


class ComparisonRow(_Open):
    """One method of the held-out comparison, as deployed."""

    method: str
    ppl: float = Field(description="at L' in the job's scoring mode")
    mean_nll: float | None = None
    ppl_by_length: dict[str, float] | None = Field(
        None, description="prompt length → perplexity (None: a job from before results by length)")
    gain_vs_this_pct: float | None = Field(None, description="how much lower the best is, in %")


class Comparison(_Open):
    """A finished job's held-out comparison (``comparison.json``)."""

    documents: str | None = None
    deploy: str | None = None
    lengths: list[int] = []
    semantics: str | None = None
    rows: list[ComparisonRow]


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
    heldout: Comparison | None = Field(None, description="comparison.json: by length")


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
    status: Status
    generation: int
    new: bool | None = Field(None, description="False: a parent carried over")
    cost_tokens: int | None = None
    cost_spent_tokens: int | None = None
    task: str | None = None


class ErrorBody(BaseModel):
    """Every refusal (401, 404, 409, 413): what went wrong, in one sentence."""

    detail: str


class ConfigErrorBody(ErrorBody):
    """A refused job spec or query (422): the field, the problem and the fix, as the CLI says."""

    field: str
    problem: str
    fix: str
    errors: list[dict[str, Any]] | None = Field(None, description="pydantic's errors, if any")


class Provenance(_Open):
    """What every export carries about its search (``longrope_search``)."""

    job: str
    target_length: int
    exported_for: str


class HfExport(_Open):
    """``format=hf``: the block for config.json (``config=true``: the whole patched config)."""

    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    longrope_search: Provenance


class VllmExport(_Open):
    """``format=vllm``: vLLM's ``rope_scaling``, its ``--hf-overrides`` and the command line."""

    rope_scaling: dict[str, Any]
    max_model_len: int
    hf_overrides: dict[str, Any]
    cli_args: str
    longrope_search: Provenance


class FactorRecord(_Open):
    """``format=longrope``: the factors with everything about the search that made them."""

    format: str
    format_version: int
    lambdas: list[float]
    n_hat: int
    attention_factor: float
    short_factor: list[float]
    original_length: int
    target_length: int
    extension_ratio: float
    perplexity: dict[str, Any]


class Vocabulary(BaseModel):
    """The words the API's answers use, each map (constant name → value) or list from its one
    definition in Python; the dashboard reads them here instead of spelling them."""

    statuses: dict[str, Status] = Field(description="an evaluation's status (tables, candidates)")
    states: dict[str, State] = Field(description="a job's state in the service")
    active: list[State] = Field(description="states of a job not yet ended")
    cancellable: list[State]
    resumable: list[State]
    operators: dict[str, str] = Field(description="how a candidate was made, seeds aside")
    seed_prefix: str = Field(description="a seed candidate's operator: <seed_prefix><name>")
    export_formats: dict[str, str]
    json_exports: list[str] = Field(description="the formats that are JSON documents")
    scoring_modes: list[str]
    early_stopping_rules: list[str]
