"""Perplexity by length scores each distinct rotation once."""

from __future__ import annotations

from longrope_search.evaluation.documents import load_documents
from longrope_search.evaluation.sweep import perplexity_by_length
from longrope_search.rope import seed_candidate


def test_seeds_that_rotate_alike_are_scored_once(embedded):
    g = embedded.geometry
    L = g.original_length
    docs = load_documents(embedded.path / "documents" / "heldout", embedded.tokenizer,
                          min_tokens=2 * L, k=2, max_tokens=2 * L)
    rows_seen: list[int] = []
    hook = embedded.model.model.register_forward_pre_hook(
        lambda _, args, kwargs: rows_seen.append(
            (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0])
            .shape[0]), with_kwargs=True)
    try:
        twin = seed_candidate("yarn", g, 2.0).with_(name="yarn-again")
        rows = perplexity_by_length(embedded.model, g, docs, [L, 2 * L], candidates=[twin],
                                    batch_size=1, progress=False)
    finally:
        hook.remove()
    # at L every seed is the unmodified model: 1 rotation, and the fixed twin; at 2L four seeds,
    # the twin is yarn's
    assert sum(rows_seen) == len(docs) * (2 + 4)
    at = {(r["method"], r["length"]): r["ppl"] for r in rows}
    assert len(at) == 10
    assert len({at[m, L] for m in ("none", "pi", "ntk", "yarn")}) == 1
    assert at["yarn-again", 2 * L] == at["yarn", 2 * L] != at["pi", 2 * L]
