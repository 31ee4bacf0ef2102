"""Ray workers that load a model once and score candidates (see issue: distributed search).

The scoring they run is :class:`longrope_search.evaluation.perplexity.PerplexityScorer`.
"""
