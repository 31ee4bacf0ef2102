"""How a candidate is scored: the scorer on the plan's documents at L' in the scoring mode (or
the multi-length fitness), and the needles hidden in the documents for ``mode: needle``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from longrope_search.evaluation.modes import NEEDLE
from longrope_search.evaluation.needles import NeedleDocument, answer_labels, needle_documents
from longrope_search.evaluation.perplexity import MultiLengthScorer, PerplexityScorer, Scorer
from longrope_search.model import LoadedModel

if TYPE_CHECKING:  # a plan is only read here
    from longrope_search.search.plan import Plan


def scorer_for(plan: Plan, loaded: LoadedModel, documents: list[torch.Tensor] | None = None
               ) -> Scorer:
    """The job's fitness on its search documents (or ``documents``, e.g. ``plan.heldout``): at
    L' in the scoring mode, or the weighted multi-length fitness of ``scoring.lengths``."""
    docs = plan.documents if documents is None else documents
    sc = plan.spec.scoring
    if sc.lengths:
        return MultiLengthScorer([truncated_scorer(plan, loaded, docs, n) for n in sc.lengths],
                                 sc.length_weights)
    return target_scorer(plan, loaded, docs)


def target_scorer(plan: Plan, loaded: LoadedModel, docs: list) -> PerplexityScorer:
    """Perplexity at L' in the job's scoring mode (needles hidden in the documents too)."""
    sc = plan.spec.scoring
    if sc.mode == NEEDLE:
        needled = needles_of(plan, loaded.tokenizer, docs)
        return PerplexityScorer(loaded.model, plan.geometry, [n.ids for n in needled],
                                length=plan.target_length, batch_size=sc.batch_size,
                                groups=[answer_labels(n) for n in needled])
    return PerplexityScorer(loaded.model, plan.geometry, docs, length=plan.target_length,
                            mode=sc.mode, stride=sc.stride, batch_size=sc.batch_size)


def truncated_scorer(plan: Plan, loaded: LoadedModel, docs: list, length: int
                     ) -> PerplexityScorer:
    """Each document's first ``length`` tokens, one forward each."""
    return PerplexityScorer(loaded.model, plan.geometry, docs, length=length,
                            batch_size=plan.spec.scoring.batch_size)


def needles_of(plan: Plan, tokenizer: Any, docs: list) -> list[NeedleDocument]:
    """The documents with needles: the same for every candidate (seeded by documents_seed)."""
    spec = plan.spec
    return needle_documents(docs, tokenizer, plan.target_length, spec.scoring.needles,
                            spec.documents_seed)
