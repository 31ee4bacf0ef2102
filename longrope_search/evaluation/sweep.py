"""Perplexity by evaluation length for the hand-made seeds and any given candidates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from longrope_search.evaluation.modes import TRUNCATE, WindowMode
from longrope_search.evaluation.perplexity import PerplexityScorer
from longrope_search.rope import Candidate, RopeGeometry, seed_candidate

DEFAULT_METHODS = ("none", "pi", "ntk", "yarn")


def perplexity_by_length(
    model, geometry: RopeGeometry, documents: Sequence[torch.Tensor], lengths: Sequence[int], *,
    methods: Sequence[str] = DEFAULT_METHODS, candidates: Sequence[Candidate] = (),
    mode: WindowMode = TRUNCATE, stride: int = 256, batch_size: int | str = "auto",
    progress: bool = True, fixed_ratio: float | None = None,
) -> list[dict]:
    """One row per (method, length).

    Seeds are rebuilt at each length ℓ for s = max(1, ℓ/L), each tuned to its length; with
    ``fixed_ratio`` they are built once for that s and applied at every length, as a deployed
    config is (dynamic NTK at ℓ itself either way: that is how engines apply it). The given
    candidates are fixed factors and are scored as they are at every length. Candidates that
    rotate alike (every per-length seed at ℓ ≤ L is the unmodified model) are scored once.
    """
    rows = []
    bar = tqdm(total=len(lengths) * len(documents), desc="perplexity", unit="doc",
               disable=not progress)
    for length in lengths:
        s = fixed_ratio or max(1.0, length / geometry.original_length)
        cands = [seed_candidate(m, geometry, s, length=length) for m in methods] + list(candidates)
        unique = {_same_rotation(c): c for c in reversed(cands)}
        scorer = PerplexityScorer(model, geometry, documents, length=length, mode=mode,
                                  stride=stride, batch_size=batch_size)
        bar.set_postfix(length=length)
        scored = {_same_rotation(r.candidate): r for r in
                  scorer.score(list(unique.values()), on_document=lambda _: bar.update())}
        for c in cands:
            res = scored[_same_rotation(c)]
            rows.append({
                "method": c.name, "length": length, "extension_ratio": s, "ppl": res.ppl,
                "mean_nll": res.mean_nll, "documents": len(res.nll),
                "tokens": int(res.tokens.sum()), "n_hat": c.n_hat,
                "attention_factor": c.attention_factor, "lambda_min": float(c.lambdas.min()),
                "lambda_max": float(c.lambdas.max()), "mode": mode,
                "seeds_at": "fixed ratio" if fixed_ratio else "each length's ratio",
            })
    bar.close()
    return rows


def _same_rotation(c: Candidate) -> tuple[bytes, int, float]:
    return c.lambdas.tobytes(), c.n_hat, c.attention_factor
