"""From a job spec to what a search needs, checked before any weights load.

:func:`plan_job` reads the model's config (no weights) and builds the space and the seed
candidates; :func:`check_documents` reads the tokenizer and the documents (no weights) so that
too-short or missing documents are refused before a job folder exists. The scorer, the best
record and the held-out comparison are built here too, for the driver and the Ray workers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from longrope_search.deploy import (
    ENGINES,
    Engine,
    FactorSets,
    default_lengths,
    deployed,
    two_sets_safe,
)
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.needles import (
    NeedleDocument,
    answer_labels,
    depths,
    needle_documents,
)
from longrope_search.evaluation.perplexity import MultiLengthScorer, PerplexityScorer, Scorer
from longrope_search.factor_file import load_factor_file
from longrope_search.model import LoadedModel
from longrope_search.model.loading import attention_window, check_attn_implementation
from longrope_search.model.source import ModelSource
from longrope_search.rope import Candidate, RopeGeometry, attention_factor, seed_candidate
from longrope_search.search.job import JobSpec
from longrope_search.search.space import N_HAT_CHOICES, Genome, SearchSpace, critical_dim
from longrope_search.search.strategies import SearchProblem, Strategy, get_strategy
from longrope_search.search.trial import Evaluation, seed_operator

BASELINES = ("pi", "ntk", "yarn")  # what the held-out comparison measures the best against
UNMODIFIED = "unmodified"  # the comparison's row of the model as it was trained
NO_N_HAT = "best, n̂ = 0 (exported)"  # deploy: python's row of what the other engines get


@dataclass
class Plan:
    """Everything derived from a job spec before any weights are loaded."""

    spec: JobSpec
    geometry: RopeGeometry
    original_length: int
    target_length: int
    extension_ratio: float
    space: SearchSpace
    seeds: list[tuple[str, Genome]]  # the seed candidates
    attention_factor: float
    window: int | None = None  # the model's sliding window, when every layer has one
    model_type: str | None = None
    comparison_lengths: tuple[int, ...] = ()  # where the held-out comparison reports

    @property
    def two_sets(self) -> bool:
        """Whether the job's engine carries a short factor set apart from the long one."""
        return two_sets_safe(self.spec.deploy, self.model_type)


def _with_original_length(spec: JobSpec, geometry: RopeGeometry) -> RopeGeometry:
    """The model's geometry with the spec's L, which must agree with the config's unless the
    spec says it overrides it (the seeds' YaRN ramps and n̂ are then built on the spec's L)."""
    L = spec.original_length
    if L is None or geometry.original_length == L:
        return geometry
    if not spec.override_original_length:
        raise ConfigError("original_length", f"{L} contradicts the model's config, which says "
                          f"L = {geometry.original_length}", "leave original_length out, or "
                          "set override_original_length: true if the config is wrong about the "
                          "length the model was trained on")
    return replace(geometry, original_length=L)


def plan_job(spec: JobSpec) -> Plan:
    """Validate a job against its model's config (cheap: no weights) and build space and seeds."""
    config = ModelSource.of(spec.model_path).config(spec.trust_remote_code)
    geometry = _with_original_length(spec, RopeGeometry.from_config(config))
    L, Lp, s = spec.resolve_lengths(geometry.original_length)
    check_attn_implementation(spec.scoring.attn_implementation, "scoring.attn_implementation")
    window = attention_window(config)
    _check_window(spec, window, Lp)
    sp = spec.space
    if spec.factors == "short" and sp.lambda_max is None:
        raise ConfigError("space.lambda_max", "a short-factor job has no extension ratio to "
                          "bound λ by", "give space.lambda_max, e.g. the long job's ratio s "
                          "(longrope-search recover sets it)")
    cd = None
    if sp.longrope2:
        cd = sp.critical_dim if sp.critical_dim is not None else critical_dim(geometry)
    n_hat = spec.n_hat_choices
    if tuple(n_hat) == N_HAT_CHOICES:  # the default choices: those that fit below L'
        n_hat = tuple(n for n in n_hat if n < Lp)
    space = SearchSpace(num_pairs=geometry.num_pairs, extension_ratio=s, target_length=Lp,
                        lambda_min=sp.lambda_min, lambda_max=sp.lambda_max, step=sp.step,
                        strict=sp.monotone == "strict", n_hat_choices=n_hat,
                        critical_dim=cd)
    seeds = [(name, space.genome_from_lambdas(seed_candidate(name, geometry, s).lambdas))
             for name in spec.seeds]
    for i, f in enumerate(spec.seed_files):
        cand = load_factor_file(Path(f).expanduser(), geometry, f"seed_files[{i}]")
        seeds.append((cand.name, space.genome_from_lambdas(cand.lambdas, cand.n_hat)))
    sc = spec.scoring
    if sc.mode == "sliding" and sc.stride > Lp:
        raise ConfigError("scoring.stride", f"{sc.stride} is longer than the window L' = {Lp}",
                          f"use a stride of at most {Lp} (e.g. {max(1, Lp // 4)})")
    if sc.document_tokens is not None and sc.document_tokens < Lp:
        raise ConfigError("scoring.document_tokens", f"{sc.document_tokens} is shorter than the "
                          f"window L' = {Lp}", f"use at least {Lp}, or leave it out")
    model_type = getattr(config, "model_type", None)
    _check_lengths(spec, L, Lp, two_sets_safe(spec.deploy, model_type))
    m = attention_factor(spec.attention_factor, s, L)
    lengths = (spec.comparison_lengths or default_lengths(L, Lp)) if spec.factors == "long" \
        else (Lp,)
    return Plan(spec, geometry, L, Lp, s, space, seeds, m, window, model_type,
                tuple(sorted(set(lengths))))


def _check_lengths(spec: JobSpec, L: int, Lp: int, two_sets: bool) -> None:
    """Every length a job scores or reports at is at most L'; a fitness length at ≤ L is
    refused where the engine applies the short factors there, not the searched ones."""
    for field, lengths in (("scoring.lengths", spec.scoring.lengths),
                           ("comparison_lengths", spec.comparison_lengths)):
        if lengths and max(lengths) > Lp:
            raise ConfigError(field, f"{max(lengths)} is beyond the target length L' = {Lp}",
                              f"use lengths from 2 to {Lp}")
    if two_sets and spec.factors == "long" and spec.scoring.lengths and \
            min(spec.scoring.lengths) <= L:
        raise ConfigError("scoring.lengths", f"deploy: {spec.deploy} applies the short factors "
                          f"to this model's prompts up to L = {L}, not the searched long ones, "
                          f"so scoring them at {min(spec.scoring.lengths)} tells nothing",
                          f"use lengths above {L} (search the short factors with "
                          "longrope-search recover)")


def _check_window(spec: JobSpec, window: int | None, target_length: int) -> None:
    """Refuse a model that never attends past a window shorter than L', unless the spec
    removes the window."""
    if window is not None and window < target_length and not spec.remove_sliding_window:
        raise ConfigError(
            "model", f"{spec.model_path.name} attends only to the last {window} tokens in every "
            f"layer (sliding_window), so at L' = {target_length} it sees no distance it was not "
            "trained on and no λ extends it", "use a model without a window (e.g. "
            "Mistral-7B-v0.2 rather than v0.1), or set remove_sliding_window: true to score it "
            "with full attention")


def window_note(plan: Plan) -> str | None:
    """What a user is told when the job removes its model's sliding window."""
    spec = plan.spec
    if not spec.remove_sliding_window or plan.window is None:
        return None
    return (f"note: {spec.model_path.name}'s sliding window of {plan.window} tokens is removed "
            "(remove_sliding_window): every layer attends to the whole context, which the model "
            "was not trained for; deploy the factors with the window removed too")


def prepare(spec: JobSpec) -> tuple[Plan, Strategy]:
    """Everything that can be checked before weights load or a job folder exists: the model's
    config, the space and seeds, the strategy's options, the documents (tokenizer only)."""
    plan = plan_job(spec)
    strategy = make_strategy(plan)
    check_documents(plan)
    return plan, strategy


def make_strategy(plan: Plan) -> Strategy:
    """The job's strategy, ready to ask (cheap; refuses bad ``strategy_options``)."""
    spec = plan.spec
    problem = SearchProblem(plan.space, plan.seeds, spec.evolution, spec.seed,
                            spec.strategy_options, spec.evaluation_budget, spec.budget.tokens,
                            spec.k_documents)
    return get_strategy(spec.strategy)(problem)


def comparison_documents(spec: JobSpec) -> Path:
    """Held-out documents when the job names them, else its search documents."""
    return spec.heldout_path or spec.documents_path


def check_documents(plan: Plan) -> None:
    """Tokenize the search and held-out documents (tokenizer only, no weights): refuse a job
    whose documents are missing or too short before it is accepted."""
    spec = plan.spec
    tokenizer = ModelSource.of(spec.model_path).tokenizer(spec.trust_remote_code)
    for field, path in (("documents", spec.documents_path),
                        ("heldout_documents", comparison_documents(spec))):
        try:
            docs = _documents(spec, plan, tokenizer, path)
        except ConfigError as e:
            raise ConfigError(field, e.problem, e.fix) from None
        if spec.scoring.mode == "needle":
            _needles(plan, tokenizer, docs)  # room for the needles in L'?


def _documents(spec: JobSpec, plan: Plan, tokenizer: Any, path: Path) -> list:
    tokens = spec.scoring.document_tokens or plan.target_length
    return load_documents(path, tokenizer, min_tokens=tokens, k=spec.k_documents,
                          seed=spec.documents_seed, max_tokens=tokens,
                          text_field=spec.text_field)


def scorer_for(plan: Plan, loaded: LoadedModel, documents: Path | None = None) -> Scorer:
    """The job's fitness on its search documents (or ``documents``): at L' in the scoring
    mode, or the weighted multi-length fitness of ``scoring.lengths``."""
    spec = plan.spec
    docs = _documents(spec, plan, loaded.tokenizer, documents or spec.documents_path)
    sc = spec.scoring
    if sc.lengths:
        return MultiLengthScorer([_truncated(plan, loaded, docs, n) for n in sc.lengths],
                                 sc.length_weights)
    return _target_scorer(plan, loaded, docs)


def _target_scorer(plan: Plan, loaded: LoadedModel, docs: list) -> PerplexityScorer:
    """Perplexity at L' in the job's scoring mode (needles hidden in the documents too)."""
    sc = plan.spec.scoring
    if sc.mode == "needle":
        needled = _needles(plan, loaded.tokenizer, docs)
        return PerplexityScorer(loaded.model, plan.geometry, [n.ids for n in needled],
                                length=plan.target_length, batch_size=sc.batch_size,
                                groups=[answer_labels(n) for n in needled])
    return PerplexityScorer(loaded.model, plan.geometry, docs, length=plan.target_length,
                            mode=sc.mode, stride=sc.stride, batch_size=sc.batch_size)


def _truncated(plan: Plan, loaded: LoadedModel, docs: list, length: int) -> PerplexityScorer:
    """Each document's first ``length`` tokens, one forward each."""
    return PerplexityScorer(loaded.model, plan.geometry, docs, length=length,
                            batch_size=plan.spec.scoring.batch_size)


def _needles(plan: Plan, tokenizer: Any, docs: list) -> list[NeedleDocument]:
    """The documents with needles: the same for every candidate (seeded by documents_seed)."""
    spec = plan.spec
    return needle_documents(docs, tokenizer, plan.target_length, spec.scoring.needles,
                            spec.documents_seed)


def compare_on_documents(plan: Plan, loaded: LoadedModel, best: Candidate,
                         documents: Path) -> list[dict[str, Any]]:
    """The best candidate against the baselines on other documents, typically held-out ones
    never used as fitness, at every length of ``plan.comparison_lengths``.

    Each row has ``ppl`` at L' in the job's scoring mode (needle retrieval too) and
    ``ppl_by_length``: each document's first n tokens, one forward, every method as it is
    deployed (:func:`methods_at`): the searched factors as the job's engine applies them,
    the unmodified model, and PI, NTK and YaRN at the job's fixed ratio.
    """
    docs = _documents(plan.spec, plan, loaded.tokenizer, documents)
    by_length = {n: _truncated(plan, loaded, docs, n).score(methods_at(plan, best, n))
                 for n in plan.comparison_lengths}
    at_target = methods_at(plan, best, plan.target_length)
    sc = plan.spec.scoring
    if plan.target_length in by_length and sc.mode == "truncate":
        results = by_length[plan.target_length]
    else:  # the job's own mode at L' (sliding windows, needles)
        scorer = _target_scorer(plan, loaded, docs)
        results = scorer.score(at_target)
    rows = [{"method": r.candidate.name, "ppl": r.ppl, "mean_nll": r.mean_nll,
             "ppl_by_length": {str(n): res[i].ppl for n, res in by_length.items()}}
            for i, r in enumerate(results)]
    if sc.mode == "needle":  # retrieval accuracy by depth beside the loss
        for row, cand in zip(rows, at_target, strict=True):
            row["depths"] = list(depths(sc.needles))
            row["accuracy_by_depth"] = scorer.retrieved(cand).mean(axis=0).tolist()
    best_ppl = rows[0]["ppl"]
    for r in rows:
        r["gain_vs_this_pct"] = 100 * (r["ppl"] - best_ppl) / r["ppl"]
    return rows


def comparison_semantics(spec: JobSpec) -> str:
    """Which semantics the comparison's rows use: the job's engine for the searched factors,
    deployed configs at the job's ratio for the seeds."""
    if spec.factors == "short":
        return "short factors at the recovery's length, under the long job's attention factor"
    return (f"perplexity by prompt length; best as deploy: {spec.deploy} applies it "
            f"({ENGINES[Engine(spec.deploy)].how}); the unmodified model; PI, NTK and YaRN "
            "configured for the job's ratio, the same at every length")


def methods_at(plan: Plan, best: Candidate, length: int) -> list[Candidate]:
    """What the comparison scores at ``length``, the searched factors first: as the job's
    engine deploys them (n̂ only for ``python``, which also gets a row without it), then the
    baselines. For short factors: the baselines of :func:`baselines`."""
    if plan.spec.factors == "short":
        return [best, *baselines(plan)]
    ones = np.ones(plan.geometry.num_pairs)
    sets = FactorSets(best, ones if plan.two_sets else None)
    out = [deployed(plan.spec.deploy, sets, length, plan.original_length, best.name)]
    if out[0].n_hat:
        out.append(Candidate(best.lambdas, 0, best.attention_factor, NO_N_HAT))
    return [*out, Candidate(ones, 0, 1.0, UNMODIFIED), *baselines(plan)]


def baselines(plan: Plan) -> list[Candidate]:
    """What the held-out comparison measures the best against: PI, NTK and YaRN at the job's
    ratio, each with its own attention factor, at every length (a deployed config); or for
    short factors: the unmodified model, ones under the job's attention factor (what an engine
    without short factors applies) and each seed (the long factors) under it."""
    if plan.spec.factors == "long":
        return [seed_candidate(n, plan.geometry, plan.extension_ratio) for n in BASELINES]
    ones = np.ones(plan.geometry.num_pairs)
    m = plan.attention_factor
    return [Candidate(ones, 0, 1.0, UNMODIFIED), Candidate(ones, 0, m, "ones"),
            *(Candidate(plan.space.lambdas(g), 0, m, seed_operator(name)) for name, g in plan.seeds
              if np.any(plan.space.lambdas(g) != 1.0))]


def best_record(plan: Plan, best: Candidate, ev: Evaluation) -> dict[str, Any]:
    """The searched factors in longrope-search's own format (``longrope-search eval --factors``
    reads it)."""
    from longrope_search.model.identity import model_fingerprint, versions

    config = ModelSource.of(plan.spec.model_path).config(plan.spec.trust_remote_code)
    return {
        "lambdas": best.lambdas.tolist(), "n_hat": best.n_hat,
        "attention_factor": best.attention_factor,
        "original_length": plan.original_length, "target_length": plan.target_length,
        "extension_ratio": plan.extension_ratio, "factors": plan.spec.factors,
        "search_ppl": ev.ppl,
        "search_nll": list(ev.nll), "job": plan.spec.name, "strategy": plan.spec.strategy,
        "deploy": plan.spec.deploy, "model_type": plan.model_type,
        "model": str(plan.spec.model_path), "model_fingerprint": model_fingerprint(config),
        "rope_theta": plan.geometry.base, "versions": versions(),
    }
