"""From a job spec to what is searched, checked before any weights load.

:func:`plan_job` reads the model's config and tokenizer (no weights): the lengths, the space,
the seed candidates and the documents, tokenized once (too few, too short or missing ones are
refused before a job folder exists); :func:`make_strategy` builds the strategy (refusing bad
options); :func:`check` does both, giving the :class:`Checked` job a run uses. How a
candidate is then scored is :mod:`.fitness`; what a finished job reports is :mod:`.outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from longrope_search.deploy import (
    default_lengths,
    two_sets_safe,
)
from longrope_search.errors import ConfigError
from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.modes import NEEDLE, SLIDING
from longrope_search.evaluation.needles import needle_documents
from longrope_search.factor_file import load_factor_file
from longrope_search.model.loading import attention_window, check_attn_implementation
from longrope_search.model.source import ModelSource
from longrope_search.rope import RopeGeometry, attention_factor, seed_candidate
from longrope_search.search.job import JobSpec
from longrope_search.search.space import N_HAT_CHOICES, Genome, SearchSpace, critical_dim
from longrope_search.search.strategies import SearchProblem, Strategy, get_strategy


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
    # the fitness documents and the comparison's: k token tensors each, cut to L' (or
    # scoring.document_tokens), tokenized once per run
    documents: list[torch.Tensor] = field(default_factory=list)
    heldout: list[torch.Tensor] = field(default_factory=list)
    notes: tuple[str, ...] = ()  # what a user is told before the search starts

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
    if sc.mode == SLIDING and sc.stride > Lp:
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
    plan = Plan(spec, geometry, L, Lp, s, space, seeds, m, window, model_type,
                tuple(sorted(set(lengths))), notes=_notes(spec, window))
    tokenizer = ModelSource.of(spec.model_path).tokenizer(spec.trust_remote_code)
    plan.documents = _documents(plan, tokenizer, "documents", spec.documents_path)
    plan.heldout = plan.documents if spec.comparison_path == spec.documents_path else \
        _documents(plan, tokenizer, "heldout_documents", spec.comparison_path)
    return plan


def _check_lengths(spec: JobSpec, L: int, Lp: int, two_sets: bool) -> None:
    """Every length a job scores or reports at is at most L'; a fitness length at ≤ L is
    refused where the engine applies the short factors there, not the searched ones."""
    for name, lengths in (("scoring.lengths", spec.scoring.lengths),
                          ("comparison_lengths", spec.comparison_lengths)):
        if lengths and max(lengths) > Lp:
            raise ConfigError(name, f"{max(lengths)} is beyond the target length L' = {Lp}",
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


def _notes(spec: JobSpec, window: int | None) -> tuple[str, ...]:
    """What a user is told when the job removes its model's sliding window."""
    if not spec.remove_sliding_window or window is None:
        return ()
    return (f"note: {spec.model_path.name}'s sliding window of {window} tokens is removed "
            "(remove_sliding_window): every layer attends to the whole context, which the model "
            "was not trained for; deploy the factors with the window removed too",)


def _documents(plan: Plan, tokenizer: Any, name: str, path: Path) -> list[torch.Tensor]:
    """The job's k documents from ``path``, each cut to what is scored (L', or
    ``scoring.document_tokens``); too few or too short ones are refused as field ``name``, and so
    are documents without room for the needles of ``mode: needle``."""
    spec = plan.spec
    tokens = spec.scoring.document_tokens or plan.target_length
    try:
        docs = load_documents(path, tokenizer, min_tokens=tokens, k=spec.k_documents,
                              seed=spec.documents_seed, max_tokens=tokens,
                              text_field=spec.text_field)
    except ConfigError as e:
        raise ConfigError(name, e.problem, e.fix) from None
    if spec.scoring.mode == NEEDLE:  # room for the needles in L'?
        needle_documents(docs, tokenizer, plan.target_length, spec.scoring.needles,
                         spec.documents_seed)
    return docs


class Checked(NamedTuple):
    """A job (or one stage of a chain) checked before any weights load: what is searched and
    the strategy that searches it. :func:`check` makes it, the run uses it, nothing reads the
    spec's files twice."""

    plan: Plan
    strategy: Strategy


def check(spec: JobSpec) -> Checked:
    """Everything that can be checked before weights load or a job folder exists: the model's
    config, the space and seeds, the documents (tokenizer only), the strategy's options."""
    plan = plan_job(spec)
    return Checked(plan, make_strategy(plan))


def make_strategy(plan: Plan) -> Strategy:
    """The job's strategy, ready to ask (cheap; refuses bad ``strategy_options``)."""
    spec = plan.spec
    problem = SearchProblem(plan.space, plan.seeds, spec.search, spec.seed,
                            spec.strategy_options, spec.evaluation_budget, spec.budget.tokens,
                            spec.k_documents)
    return get_strategy(spec.strategy)(problem)
