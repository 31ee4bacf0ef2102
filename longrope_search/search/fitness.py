"""How a candidate is scored: the job's documents, its scorer at L' in the scoring mode (or
the multi-length fitness), and the needles hidden in the documents for ``mode: needle``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.needles import NeedleDocument, answer_labels, needle_documents
from longrope_search.evaluation.perplexity import MultiLengthScorer, PerplexityScorer, Scorer
from longrope_search.model import LoadedModel
from longrope_search.search.job import JobSpec

if TYPE_CHECKING:  # plan.py checks documents with these functions
    from longrope_search.search.plan import Plan


def documents_of(spec: JobSpec, plan: Plan, tokenizer: Any, path: Path) -> list:
    """The job's k documents from ``path``, each cut to what is scored (L', or
    ``scoring.document_tokens``); too few or too short ones are refused."""
    tokens = spec.scoring.document_tokens or plan.target_length
    return load_documents(path, tokenizer, min_tokens=tokens, k=spec.k_documents,
                          seed=spec.documents_seed, max_tokens=tokens,
                          text_field=spec.text_field)


def scorer_for(plan: Plan, loaded: LoadedModel, documents: Path | None = None) -> Scorer:
    """The job's fitness on its search documents (or ``documents``): at L' in the scoring
    mode, or the weighted multi-length fitness of ``scoring.lengths``."""
    spec = plan.spec
    docs = documents_of(spec, plan, loaded.tokenizer, documents or spec.documents_path)
    sc = spec.scoring
    if sc.lengths:
        return MultiLengthScorer([truncated_scorer(plan, loaded, docs, n) for n in sc.lengths],
                                 sc.length_weights)
    return target_scorer(plan, loaded, docs)


def target_scorer(plan: Plan, loaded: LoadedModel, docs: list) -> PerplexityScorer:
    """Perplexity at L' in the job's scoring mode (needles hidden in the documents too)."""
    sc = plan.spec.scoring
    if sc.mode == "needle":
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
